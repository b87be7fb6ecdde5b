"""What each finished phase of a run reported, kept in its folder so a resumed run takes those phases as they are."""
from __future__ import annotations

import errno
import json
from pathlib import Path

from kdcore.engine.checkpoint import no_space
from kdcore.record.folder import PARTIAL_SUFFIX, RunFolder


def read_finished(run_dir: Path) -> dict:
    """What each phase a run finished reported ({phase: {phase_key: ..., phase_test_acc: ...}}); {} when none."""
    try:
        return json.loads(RunFolder(run_dir).finished.read_text())
    except (OSError, ValueError):
        return {}


def write_finished(run_dir: Path, finished: dict) -> None:
    path = RunFolder(run_dir).finished
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        tmp.write_text(json.dumps(finished, default=float))
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise no_space(run_dir) from None
        raise
