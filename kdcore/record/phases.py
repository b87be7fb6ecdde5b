"""A run's phases: its teachers (teacher, teacher2, …), then the student, then the baseline."""
from __future__ import annotations

import re
from typing import Iterable

TEACHER, STUDENT, BASELINE = "teacher", "student", "baseline"
PHASE_ORDER = (TEACHER, STUDENT, BASELINE)  # the first teacher stands for all of them
_TEACHER = re.compile(r"teacher(?:[2-9]|[1-9]\d+)?")  # teacher, teacher2, teacher3, … (never teacher1 or teacher0)


def teacher_phase(index: int) -> str:
    """The phase of the index-th teacher, from 0: teacher, teacher2, teacher3, …"""
    if index < 0:
        raise ValueError(f"a teacher's index is 0 or more, not {index}")
    return TEACHER if index == 0 else f"{TEACHER}{index + 1}"


def is_teacher(phase: str) -> bool:
    """Whether `phase` names one of a run's teachers."""
    return bool(_TEACHER.fullmatch(phase))


def teacher_index(phase: str) -> int:
    """teacher -> 0, teacher2 -> 1, …; ValueError for a phase that is no teacher."""
    if not is_teacher(phase):
        raise ValueError(f"{phase!r} is not a teacher's phase")
    return 0 if phase == TEACHER else int(phase[len(TEACHER):]) - 1


def teacher_phases(names: Iterable[str]) -> list[str]:
    """The teacher phases among `names`, in their order (teacher, teacher2, …, teacher10)."""
    return sorted({n for n in names if is_teacher(n)}, key=teacher_index)


def phase_order(phase: str) -> tuple[int, int]:
    """A sort key: teachers in their order, then the student, then the baseline, then anything else."""
    if is_teacher(phase):
        return (0, teacher_index(phase))
    return ({STUDENT: 1, BASELINE: 2}.get(phase, 3), 0)
