"""What a study maximizes, read from the validation split only.

An objective gets a ValidationView of a finished trial's run: its validation figures and nothing
else. Asking it for anything measured on the test split raises TestSplitRead, so a search can never
pick settings on the images that will judge them; the study then stops and says why.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

from kdcore.registry import Registry


class TestSplitRead(RuntimeError):
    """An objective asked for a figure measured on the test split."""

    __test__ = False  # not a pytest test class, despite its name


class ValidationView(Mapping):
    """A run's summary, seen through the validation split: keys ending in val_acc, and val_size."""

    def __init__(self, summary: dict):
        self._summary = summary

    @staticmethod
    def allowed(key: str) -> bool:
        return key.endswith("val_acc") or key == "val_size"

    def __getitem__(self, key: str):
        if "test" in key:
            raise TestSplitRead(f"the objective asked for {key!r}, a test-split figure: a search must never choose "
                                "on the test images")
        if not self.allowed(key):
            raise KeyError(f"{key!r} is not a validation figure; an objective sees only "
                           f"{', '.join(sorted(k for k in self._summary if self.allowed(k)))}")
        return self._summary[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._summary if self.allowed(k))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True)
class Objective:
    name: str
    label: str  # a few words, for charts: "validation KD gain"
    description: str  # what it is, for the study's page and its JSON
    needs_baseline: bool  # trials train their scratch baseline (shared where the student's setting is the same)
    read: Callable[[ValidationView], float]
    in_points: bool  # a difference of accuracies (shown in points) rather than an accuracy (shown in %)


OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(objective: Objective) -> Objective:
    return OBJECTIVES.register(objective.name)(objective)


register_objective(Objective(
    name="val_kd_gain", label="validation KD gain", needs_baseline=True, in_points=True,
    description="the distilled student's best validation accuracy minus its scratch baseline's, on the "
                "validation split",
    read=lambda v: v["student_best_val_acc"] - v["baseline_best_val_acc"]))
register_objective(Objective(
    name="student_val_acc", label="student's validation accuracy", needs_baseline=False, in_points=False,
    description="the distilled student's best validation accuracy, on the validation split",
    read=lambda v: v["student_best_val_acc"]))

DEFAULT_OBJECTIVE = "val_kd_gain"
