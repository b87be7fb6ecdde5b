"""A store's rows and files under hostile or unlucky conditions: rows that point outside the artefact root,
0.1.0 stores sharing a folder, a store deleted or made unwritable under a running worker, and a full disk.

Each case is fed for real (real files, real worker processes, a real small filesystem where one can be
mounted) and checks what the user gets and that nothing stored was lost. docs/reliability.md lists them.
"""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.config import build_config  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.test_faults import STALL_S, TINY, _one_error_line, kdcore  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "store-0.1.0"


def _completed_run(store: Store) -> int:
    run_id = store.create_run(build_config(TINY))
    store.finish_run(run_id, "completed", {"kd_gain": 0.01})
    (store.run_dir(run_id)).mkdir(parents=True, exist_ok=True)
    (store.run_dir(run_id) / "student.pt").write_bytes(b"weights")
    return run_id


def _point_folder(db: Path, run_id: int, folder: str) -> None:
    with sqlite3.connect(db) as con:
        con.execute("update runs set folder = ? where id = ?", (folder, run_id))


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink"])
def test_a_row_whose_folder_leads_outside_the_artefact_root_is_never_deleted_or_read(tmp_path, how):
    db = tmp_path / "store" / "kd.db"
    store = Store(f"sqlite:///{db}")
    run_id = _completed_run(store)
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    folder = {"absolute": str(victim), "dot-dot": "../precious", "symlink": "innocent"}[how]
    if how == "symlink":
        (db.parent / "innocent").symlink_to(victim)
    _point_folder(db, run_id, folder)

    result = kdcore("runs", "delete", str(run_id), "--yes", db=f"sqlite:///{db}")
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "outside the artefact root" in line and "nothing there was touched" in line, line
    assert (victim / "thesis.tex").read_text() == "years of work"
    assert kdcore("runs", "show", str(run_id), db=f"sqlite:///{db}").returncode == 0  # the row is kept too
    fresh = Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("insert into artefacts (run_id, kind, path) values (?, 'student', ?)",
                    (run_id, str(victim / "thesis.tex")))
    assert "student" not in fresh.artefacts(run_id)  # reads are confined the same way


def test_two_old_stores_in_one_folder_keep_the_shared_number_folder_when_one_deletes_its_run(tmp_path):
    place = tmp_path / "runs"
    shutil.copytree(FIXTURE, place)
    shutil.copy(place / "kdcore.db", place / "other.db")  # 0.1.0 put both stores' run 1 in 1/
    weights = sorted(p.name for p in (place / "1").iterdir())

    result = kdcore("runs", "delete", "1", "--yes", db=f"sqlite:///{place / 'kdcore.db'}")
    assert result.returncode == 0, result.stderr
    assert "run 1 deleted; its folder" in result.stdout and "other.db" in result.stdout, result.stdout
    assert sorted(p.name for p in (place / "1").iterdir()) == weights
    shown = kdcore("runs", "show", "1", db=f"sqlite:///{place / 'other.db'}")
    assert shown.returncode == 0 and "not found" not in shown.stdout + shown.stderr

    alone = tmp_path / "alone"  # with no other store beside it, the folder goes with its run
    shutil.copytree(FIXTURE, alone)
    assert kdcore("runs", "delete", "1", "--yes", db=f"sqlite:///{alone / 'kdcore.db'}").returncode == 0
    assert not (alone / "1").exists()
