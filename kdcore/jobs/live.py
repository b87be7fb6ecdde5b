"""A run's progress while it executes: kept by its worker, stored in its row, read by any process."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Optional

# Heartbeats come every second (kdcore.store.HEARTBEAT_S); ten missed in a row is a stopped worker, not a slow step
STALE_AFTER_S = 10.0


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
    # when this attempt began training (its first phase) and run_progress then: the ETA is paced from there, so a
    # resumed run's earlier epochs, or a teacher reused from another run, do not count as this attempt's speed
    pace_since: float = 0.0
    pace_from: float = 0.0
    heartbeat_at: float = 0.0  # time.time() of the run's last heartbeat, set by readers from its row (not stored)
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

    def begin_pace(self) -> None:
        """Called as a phase begins: the first call of an attempt is where its pace is measured from."""
        if not self.pace_since:
            self.pace_since, self.pace_from = time.time(), self.run_progress

    @property
    def eta_s(self) -> Optional[float]:
        """Seconds left in the whole run, from this attempt's pace; None while unknown or the heartbeat is stale."""
        if self.stale_since() is not None:
            return None
        progress = self.run_progress
        since, done = ((self.pace_since, progress - self.pace_from) if self.pace_since
                       else (self.run_started or self.phase_started, progress))
        if done <= 0 or not since:
            return None
        return (time.time() - since) * (1 - progress) / done

    def stale_since(self, now: Optional[float] = None) -> Optional[float]:
        """The time of the last heartbeat of a running run once it is over STALE_AFTER_S old; else None."""
        if self.status != "running" or not self.heartbeat_at:
            return None
        return self.heartbeat_at if (now or time.time()) - self.heartbeat_at > STALE_AFTER_S else None

    def stale_note(self) -> Optional[str]:
        """'no heartbeat since …' in words when the heartbeat is stale (its worker stopped or hangs); else None."""
        since = self.stale_since()
        if since is None:
            return None
        from kdcore.store import lease_grace_s

        age = time.time() - since
        return (f"No heartbeat since {datetime.fromtimestamp(since):%H:%M:%S} ({age:.0f} s ago): its worker may have "
                f"stopped, and its progress is as of then. The run is marked interrupted once "
                f"{lease_grace_s():g} s pass without one (KDCORE_LEASE_GRACE_S).")

    def stored(self) -> dict:
        """The fields kept in the run's row (everything but the curve history)."""
        data = asdict(self)
        for transient in ("history", "summary", "error", "run_id", "status", "heartbeat_at"):
            data.pop(transient)
        return data

    @classmethod
    def from_stored(cls, run_id: int, status: str, data: dict, error: Optional[str] = None,
                    summary: Optional[dict] = None) -> "LiveState":
        known = {k: v for k, v in data.items()
                 if k in cls.__dataclass_fields__
                 and k not in ("run_id", "status", "error", "summary", "history", "heartbeat_at")}
        return cls(run_id=run_id, status=status, error=error, summary=summary or {}, **known)
