"""The files of a run's folder, named in one place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdcore.record.phases import is_teacher, teacher_phases

WEIGHTS_SUFFIX = ".pt"
LAST_SUFFIX = "_last"  # the weights at the last epoch; the plain file holds the best on validation
STATE_SUFFIX = "_state.pt"  # a phase's whole training state at its last finished epoch, for resume
TEST_LOGITS_FILE = "test_logits.pt"
FINISHED_FILE = "finished_phases.json"
INT8_SUFFIX = "_int8.onnx"  # a phase quantized to int8 by `kdcore export --quantize int8`
INT8_RECORD_SUFFIX = "_int8.json"  # beside it: how it was made and checked (size, latency, accuracy)
PARTIAL_SUFFIX = ".tmp"  # a file being written, renamed into place when whole
UPLOADS = "uploads"  # beside the run folders: files people uploaded in the dashboard


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the name of every file in it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def weights(self, phase: str, last: bool = False) -> Path:
        """The phase's weights: its best on validation, or with `last` its last epoch's."""
        return self.path / f"{phase}{LAST_SUFFIX if last else ''}{WEIGHTS_SUFFIX}"

    def state(self, phase: str) -> Path:
        return self.path / f"{phase}{STATE_SUFFIX}"

    def int8(self, phase: str) -> Path:
        """The phase's int8 ONNX file, kept only when its accuracy drop passed (or was forced)."""
        return self.path / f"{phase}{INT8_SUFFIX}"

    def int8_record(self, phase: str) -> Path:
        return self.path / f"{phase}{INT8_RECORD_SUFFIX}"

    @property
    def test_logits(self) -> Path:
        return self.path / TEST_LOGITS_FILE

    @property
    def finished(self) -> Path:
        return self.path / FINISHED_FILE

    def partial_files(self) -> list[Path]:
        """Files left half-written (a write that failed or was killed)."""
        return sorted(self.path.glob(f"*{PARTIAL_SUFFIX}")) if self.path.is_dir() else []

    def weight_files(self) -> dict[str, Path]:
        """Every weights file present, by its kind: teacher, teacher_last, teacher2, student, baseline_last, …"""
        found = {}
        if not self.path.is_dir():
            return found
        for path in self.path.glob(f"*{WEIGHTS_SUFFIX}"):
            kind = path.name[: -len(WEIGHTS_SUFFIX)]
            phase = kind.removesuffix(LAST_SUFFIX)
            if phase in ("student", "baseline") or is_teacher(phase):
                found[kind] = path
        return dict(sorted(found.items()))

    def teachers_saved(self) -> list[str]:
        """The teacher phases whose best weights are in the folder, in order."""
        return teacher_phases(k for k in self.weight_files() if not k.endswith(LAST_SUFFIX))
