"""Events the trainer emits; the job runner turns them into stored metrics and live state."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kdcore.record.phases import PHASE_ORDER

PHASES = PHASE_ORDER  # its name here before kdcore.record


@dataclass
class Event:
    """kind: "plan" (the phases and their most steps, once), "phase" (a phase starts), "step" (a
    reporting point inside an epoch), "epoch" (an epoch ended, with validation), "summary" (the run's result)."""

    kind: str
    phase: str = ""
    epoch: int = 0  # 1-based epoch within the phase
    step: int = 0  # global step within the phase
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[Event], None]


def no_callback(event: Event) -> None:
    return None
