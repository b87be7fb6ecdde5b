"""A run's progress while it executes: kept by its worker, stored in its row, read by any process."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class LiveState:
    """What a UI shows of a run while it executes.

    The worker keeps it in memory and writes it to the run's row at each heartbeat;
    pages rebuild it from the row (and the stored metric rows for `history`).
    """

    run_id: int
    status: str = "queued"
    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0  # step within the phase
    steps_per_epoch: int = 0
    images_per_s: float = 0.0
    phase_started: float = 0.0  # time.time() when the phase began
    run_started: float = 0.0  # time.time() when the run began
    phases: list[str] = field(default_factory=list)  # the phases this run goes through
    planned_steps: dict[str, int] = field(default_factory=dict)  # at most this many steps per phase
    history: list[dict] = field(default_factory=list)  # rows: phase, kind, step, epoch, name, value (not stored)
    summary: dict = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def phase_progress(self) -> float:
        total = self.epochs * self.steps_per_epoch
        return min(1.0, self.step / total) if total else 0.0

    @property
    def run_progress(self) -> float:
        """Share of the whole run's planned steps done (early stopping can end it sooner)."""
        total = sum(self.planned_steps.values())
        if not total:
            return self.phase_progress
        order = [p for p in self.phases if p in self.planned_steps]
        done = sum(self.planned_steps[p] for p in order[:order.index(self.phase)]) if self.phase in order else 0
        return min(1.0, (done + min(self.step, self.planned_steps.get(self.phase, 0))) / total)

    @property
    def eta_s(self) -> Optional[float]:
        """Seconds left in the whole run, from its pace so far."""
        progress = self.run_progress
        started = self.run_started or self.phase_started
        if progress <= 0 or not started:
            return None
        return (time.time() - started) * (1 - progress) / progress

    def stored(self) -> dict:
        """The fields kept in the run's row (everything but the curve history)."""
        data = asdict(self)
        for transient in ("history", "summary", "error", "run_id", "status"):
            data.pop(transient)
        return data

    @classmethod
    def from_stored(cls, run_id: int, status: str, data: dict, error: Optional[str] = None,
                    summary: Optional[dict] = None) -> "LiveState":
        known = {k: v for k, v in data.items()
                 if k in cls.__dataclass_fields__ and k not in ("run_id", "status", "error", "summary", "history")}
        return cls(run_id=run_id, status=status, error=error, summary=summary or {}, **known)
