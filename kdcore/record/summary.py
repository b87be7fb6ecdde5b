"""A run's stored summary, typed: its phases' results, its teachers, its KD gain in words.

The summary stays the JSON dict a run stores (`<phase>_test_acc`, `teachers`, `kd_gain_ci95`, …); RunSummary
reads it and hands it back unchanged, so old stores and other readers see the same JSON.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from kdcore.record.phases import BASELINE, STUDENT, teacher_phases

# Summary keys copied into the runs table's own columns when a run finishes: the runs table, group reports and
# sorting read them in one query, without parsing thousands of summaries (kdcore.store.Store.finish_run).
PROMOTED_COLUMNS = ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain", "student_best_val_acc",
                    "teacher_params", "student_params", "teacher_flops", "student_flops")
# Summary keys the runs frame reads out of the summary JSON, not columns of their own (kdcore.store's
# FRAME_FROM_SUMMARY and TEXT_FROM_SUMMARY); kd_gain_ci95 is read as kd_gain_low and kd_gain_high.
FRAME_KEYS = ("kd_gain_ci95", "kd_gain_p_value", "test_images", "teacher_from_run", "baseline_from_run",
              "ensemble_test_acc", "student_latency_ms_b1", "teacher_latency_ms_b1", "eval_precision")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _number(value) -> Optional[float]:
    """A stored number, or None for a missing, non-numeric or NaN one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return value


@dataclass(frozen=True)
class PhaseResult:
    """What one phase (a teacher, the student, the baseline) ended with, as its run stored it."""

    phase: str
    arch: Optional[str] = None
    source: Optional[str] = None  # a teacher's: train, checkpoint, run, torchvision, …
    test_acc: Optional[float] = None
    params: Optional[float] = None
    flops: Optional[float] = None
    macs: Optional[float] = None  # stored, else FLOPs / 2 (a multiply-add is 2 FLOPs)
    latency_ms_b1: Optional[float] = None
    pretrained_test_acc: Optional[float] = None  # a fine-tuned teacher's before fine-tuning
    finetune_epochs: Optional[int] = None
    from_run: Optional[int] = None  # trained by another run of the group and reused here


class RunSummary:
    """A run's summary dict, read through one set of rules."""

    def __init__(self, data: Optional[Mapping] = None):
        self._data = copy.deepcopy(dict(data)) if isinstance(data, Mapping) else {}

    @classmethod
    def view(cls, data) -> "RunSummary":
        """Reads `data` in place, without copying it: for readers that only ask (the runs table, row by row)."""
        summary = cls.__new__(cls)
        summary._data = data if isinstance(data, dict) else {}
        return summary

    @classmethod
    def from_stored(cls, data) -> "RunSummary":
        """From the stored dict (None or a damaged value read as empty)."""
        return cls(data)

    def to_stored(self) -> dict:
        """The dict as stored, unchanged: RunSummary.from_stored(d).to_stored() == d."""
        return copy.deepcopy(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __bool__(self) -> bool:
        return bool(self._data)

    # ---- phases -------------------------------------------------------------------------------------------
    def teacher_phases(self) -> list[str]:
        """The run's teachers in order: as its `teachers` list names them, else (a run stored before the list)
        the teacher phases it stored a test accuracy for."""
        listed = [t.get("phase") for t in self._listed()]
        if listed:
            return [p for p in listed if isinstance(p, str) and p]
        return teacher_phases(k.removesuffix("_test_acc") for k in self._data if k.endswith("_test_acc"))

    def teachers(self, default_arch: Optional[str] = None) -> list[PhaseResult]:
        """Each teacher's result, in order; `default_arch` (the run's teacher_arch column) names a teacher whose
        summary does not."""
        return [self.phase(p, default_arch) for p in self.teacher_phases()]

    def phase(self, phase: str, default_arch: Optional[str] = None) -> PhaseResult:
        """One phase's result; a phase the run did not store has only its name (and `default_arch`)."""
        s = self._data
        entry = next((t for t in self._listed() if t.get("phase") == phase), {})
        flops = _number(s.get(f"{phase}_flops"))
        macs = _number(s.get(f"{phase}_macs"))
        from_run = s.get(f"{phase}_from_run")
        return PhaseResult(
            phase=phase, arch=entry.get("arch") or default_arch, source=entry.get("source"),
            test_acc=_number(s.get(f"{phase}_test_acc", entry.get("test_acc"))),
            params=_number(s.get(f"{phase}_params", entry.get("params"))), flops=flops,
            macs=macs if macs is not None else (flops / 2 if flops is not None else None),
            latency_ms_b1=_number(s.get(f"{phase}_latency_ms_b1")),
            pretrained_test_acc=_number(s.get(f"{phase}_pretrained_test_acc", entry.get("pretrained_test_acc"))),
            finetune_epochs=s.get(f"{phase}_finetune_epochs", entry.get("finetune_epochs")),
            from_run=from_run if isinstance(from_run, int) else None)

    def phases(self) -> list[str]:
        """Every phase with a stored test accuracy: the teachers, then the baseline, then the student."""
        teachers = [p for p in self.teacher_phases() if f"{p}_test_acc" in self._data]
        return teachers + [p for p in (BASELINE, STUDENT) if f"{p}_test_acc" in self._data]

    def _listed(self) -> list[dict]:
        return [t for t in self._data.get("teachers") or [] if isinstance(t, dict)]

    # ---- the KD gain --------------------------------------------------------------------------------------
    @property
    def kd_gain(self) -> Optional[float]:
        return _number(self._data.get("kd_gain"))

    def gain_interval(self) -> tuple[Optional[float], Optional[float]]:
        """The KD gain's 95% interval: recomputed from the discordant counts when the run stored them (so a run
        stored with a bootstrap interval reads the exact one that agrees with its test), else as stored."""
        counts = self._counts()
        if counts is not None:
            from kdcore.stats import paired_exact_ci

            return paired_exact_ci(*counts)
        ci = self._data.get("kd_gain_ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            return _number(ci[0]), _number(ci[1])
        return None, None

    def gain_p_value(self) -> Optional[float]:
        """McNemar's exact p-value of the gain (from the discordant counts when stored)."""
        counts = self._counts()
        if counts is not None:
            from kdcore.stats import mcnemar_exact

            return mcnemar_exact(*counts[:2])
        return _number(self._data.get("kd_gain_p_value"))

    def _counts(self) -> Optional[tuple[int, int, int]]:
        """(student only right, baseline only right, test images), when all three are stored."""
        d, n = self.discordant(), self._data.get("test_images")
        counts = (d.get("student_only"), d.get("baseline_only"), n)
        if all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) and n > 0:
            return counts
        return None

    def discordant(self) -> dict:
        """{"student_only": n, "baseline_only": m}: test images one of them gets right and the other wrong."""
        found = self._data.get("kd_gain_discordant")
        return found if isinstance(found, dict) else {}

    def teacher_flags(self) -> list[str]:
        """Why this run's KD gain may mean little: a teacher at chance, or teachers no better than the baseline.

        Computed from stored fields (num_classes, test_images or test_size, the accuracies), so old runs read too.
        """
        from kdcore.stats import at_chance, no_better

        n = self._data.get("test_images") or self._data.get("test_size")
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
        classes = self._data.get("num_classes")
        flags = []
        teachers = self.teachers()
        if isinstance(classes, int) and classes >= 2:
            for t in teachers:
                if t.test_acc is not None and at_chance(t.test_acc, classes, n):
                    flags.append(f"{t.phase.replace('_', ' ')} at chance: its test accuracy {_pct(t.test_acc)} is "
                                 f"within noise of guessing ({_pct(1 / classes)} for {classes} classes), so it has "
                                 "nothing to teach and the KD gain says nothing about distillation")
        several = len(teachers) > 1
        source = _number(self._data.get("ensemble_test_acc")) if several else \
            (teachers[0].test_acc if teachers else None)
        baseline = _number(self._data.get(f"{BASELINE}_test_acc"))
        if not flags and source is not None and baseline is not None and no_better(source, baseline, n):
            who = f"the {len(teachers)} teachers together" if several else "teacher"
            flags.append(f"{who} no better than the baseline: {_pct(source)} against the baseline's "
                         f"{_pct(baseline)} (the student trained alone), so the student can learn little from "
                         f"{'them' if several else 'it'} that it does not learn alone and the KD gain means little")
        return flags

    def gain_sentence(self) -> str:
        """The KD gain in words: its interval, the net test images, whether it is more than chance."""
        from kdcore.stats import describe_paired  # the words live with the statistics that make them

        discordant = self.discordant()
        net = discordant.get("student_only", 0) - discordant.get("baseline_only", 0) if discordant else None
        low, high = self.gain_interval()
        return describe_paired(self._data.get("kd_gain"), None if low is None else [low, high], self.gain_p_value(),
                               self._data.get("test_images"), net)


def gain_sentence(summary) -> str:
    """A stored summary's KD gain in words (RunSummary.gain_sentence)."""
    return (summary if isinstance(summary, RunSummary) else RunSummary.from_stored(summary)).gain_sentence()

