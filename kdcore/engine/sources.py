"""Where a phase's weights come from when this run does not train them: a teacher's source, a sibling's phase.

The engine knows no store: it is handed RunRecords, look-ups of stored runs by number and by group,
which the job layer builds from its store.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from kdcore.config import RunConfig
from kdcore.engine.checkpoint import CheckpointError
from kdcore.engine.finished import read_finished
from kdcore.record.folder import RunFolder
from kdcore.record.phases import TEACHER, is_teacher


@dataclass
class Reused:
    """A phase's weights taken from elsewhere: a sibling's finished phase, or a teacher's source.

    Attributes:
        checkpoint: the weights file.
        run_id: the stored run that trained them, if any (a seed group's or sweep's sibling).
        summary: that run's summary, whose validation figures for the phase are carried over.
        phase: the phase's name in that summary, when it differs from ours (run 3's "teacher" as our "teacherN").
    """

    checkpoint: Path
    run_id: Optional[int] = None
    summary: dict = field(default_factory=dict)
    phase: Optional[str] = None

    def described(self) -> str:
        return f"run {self.run_id}" if self.run_id is not None else str(self.checkpoint)


@dataclass
class StoredRun:
    """What the engine reads of a stored run: its folder and record."""

    id: int
    folder: Path
    status: str
    summary: dict
    config: dict
    teacher_arch: str = ""  # the runs table's arch column ("small_cnn + mlp" for several teachers)


class RunRecords(Protocol):
    """Look-ups of stored runs."""

    def folder(self, run_id: int) -> Path:
        """The run's folder, known without reading its record."""

    def run(self, run_id: int) -> StoredRun: ...

    def group(self, name: str) -> list[StoredRun]:
        """Every run of the group, read now."""


SiblingFinder = Callable[[str, str], Optional[Reused]]


def teacher_seed(config: RunConfig, index: int = 0) -> int:
    """Seed of the index-th teacher's training or fine-tuning: its own seed, else train.seed."""
    seed = config.all_teachers[index].seed
    return config.train.seed if seed is None else seed


def teacher_key(config: RunConfig, index: int = 0) -> str:
    """Equal for two configs exactly when their index-th teachers would end with the same weights."""
    t = config.all_teachers[index]
    train = _train_key(config.teacher_train(index), {"epochs", "seed"})
    dataset = config.dataset.model_dump(mode="json", exclude={"student_fraction"})
    dataset["augment"] = config.teacher_augment(index).model_dump(mode="json")  # dataset.augment unless its own
    if t.source == "train":  # the fields of the key before several teachers and fine-tuning: old runs still match
        # pretrained only when set, so keys of runs from before the field stay as they were
        teacher = t.model_dump(mode="json",
                               include={"arch", "options", "epochs"} | ({"pretrained"} if t.pretrained else set()))
    else:
        teacher = t.model_dump(mode="json", include={"arch", "options", "source", "run_id", "checkpoint",
                                                     "finetune_epochs", "finetune_last_stage_only"})
    return _digest(dict(dataset=dataset, teacher=teacher, seed=teacher_seed(config, index), train=train))


def baseline_key(config: RunConfig) -> str:
    """Equal for two configs exactly when their scratch baselines would train to the same weights."""
    return _digest(dict(dataset=config.dataset.model_dump(mode="json"),
                        student=config.student.model_dump(mode="json", exclude=None if config.student.pretrained
                                                          else {"pretrained"}),
                        train=_train_key(config.train, set())))


def _train_key(train, exclude: set) -> dict:
    """The train settings a key holds; nproc only when over 1, compile and cuda_graphs only when on, so keys of
    runs from before those fields still match."""
    unset = {name for name in ("compile", "cuda_graphs") if not getattr(train, name)}
    return train.model_dump(mode="json", exclude=exclude | unset | ({"nproc"} if train.nproc == 1 else set()))


def _digest(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def teacher_source(config: RunConfig, index: int, runs: RunRecords) -> Optional[Reused]:
    """Where a teacher not trained here starts from: its checkpoint or exported file, or a stored run's first
    teacher."""
    teacher = config.all_teachers[index]
    if teacher.source in ("checkpoint", "exported"):
        return Reused(Path(teacher.checkpoint).expanduser())
    if teacher.source != "run":
        return None
    path = RunFolder(runs.folder(teacher.run_id)).weights(TEACHER)
    if not path.is_file():
        raise CheckpointError(f"run {teacher.run_id} has no stored teacher weights ({path} is missing)")
    source = runs.run(teacher.run_id)
    if source.status != "completed" and f"{TEACHER}_test_acc" not in source.summary:
        raise CheckpointError(f"run {teacher.run_id} is {source.status} and its teacher did not finish training; "
                              "only a finished teacher can be reused")
    # the arch column lists every teacher of a run of several ("small_cnn + mlp"); its config names the first
    source_arch = (source.config.get(TEACHER) or {}).get("arch", source.teacher_arch)
    if source_arch != teacher.arch:
        raise CheckpointError(f"run {teacher.run_id}'s teacher is {source_arch!r}, not {teacher.arch!r}")
    return Reused(path, teacher.run_id, source.summary, phase=TEACHER)


def teacher_sources(config: RunConfig, runs: RunRecords) -> list[Optional[Reused]]:
    """Per teacher, in order, the weights it starts from when not trained here."""
    return [teacher_source(config, i, runs) for i in range(len(config.all_teachers))]


def recorded_teacher_phases(summary: dict) -> list[str]:
    """The teacher phases a run's summary records, from their keys (teacher_key, teacherN_key, …)."""
    return [phase for phase in (key.removesuffix("_key") for key in summary if key.endswith("_key"))
            if is_teacher(phase)]


def sibling_finder(config: RunConfig, run_id: int, runs: RunRecords) -> SiblingFinder:
    """`(phase, key) -> Reused or None`: a finished phase of another run of the same group that trained to the
    weights this run's `phase` would (the same key), for execute_run to use instead of training it again.

    The group is read at each look-up. A completed sibling's summary says what each phase was; a sibling
    still running (or stopped) counts with the phases it finished, from its run folder. A teacher may come
    from any of the sibling's teacher phases (its teacherN as our teacher).
    """
    def find(phase: str, key: str) -> Optional[Reused]:
        if not config.group:
            return None
        for run in sorted(runs.group(config.group), key=lambda r: r.id):
            if run.id == run_id:
                continue
            if run.status == "completed":
                record = run.summary
            else:
                record = {k: v for phase_record in read_finished(run.folder).values() for k, v in phase_record.items()}
            theirs = recorded_teacher_phases(record) if is_teacher(phase) else [phase]
            for their_phase in theirs:
                path = RunFolder(run.folder).weights(their_phase)
                if record.get(f"{their_phase}_key") == key and path.is_file():
                    return Reused(path, record.get(f"{their_phase}_from_run", run.id), record, phase=their_phase)
        return None
    return find


def no_siblings(phase: str, key: str) -> Optional[Reused]:
    return None
