"""A store's rows and files under hostile or unlucky conditions: rows that point outside the artefact root,
0.1.0 stores sharing a folder, a store deleted or made unwritable under a running worker, and a full disk.

Each case is fed for real (real files, real worker processes, a real small filesystem where one can be
mounted) and checks what the user gets and that nothing stored was lost. docs/reliability.md lists them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.configure import build_config  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.test_faults import TINY, _one_error_line, _wait, kdcore, read_only  # noqa: E402

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


# ---- a store lost under a running worker ---------------------------------------------------------------
LONG = ["--set", "teacher.epochs=30", "--set", "train.epochs=30"]  # long enough to be caught mid-run


def _worker_training(tmp_path: Path, **env) -> tuple[Path, subprocess.Popen, int]:
    """A `kdcore worker` process training the digits demo on a fresh store, returned once its run has a
    saved epoch (files in its folder to keep)."""
    db = tmp_path / "store" / "kd.db"
    submitted = kdcore("submit", "examples/digits.yaml", *LONG, db=f"sqlite:///{db}")
    assert submitted.returncode == 0, submitted.stderr
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", f"sqlite:///{db}", "worker"], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    store = Store(f"sqlite:///{db}")
    _wait(lambda: list(store.run_dir(1).glob("*_state.pt")) or worker.poll() is not None, "a saved epoch",
          lambda: store.get_run(1).live)
    assert worker.poll() is None, (tmp_path / "worker.log").read_text()
    return db, worker, 1


def _stopped(worker: subprocess.Popen, log: Path) -> list[str]:
    _wait(lambda: worker.poll() is not None, "the worker to stop", lambda: log.stat().st_size)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.strip()]


def test_a_worker_whose_store_is_deleted_stops_and_keeps_the_runs_files(tmp_path):
    db, worker, run_id = _worker_training(tmp_path)
    folder = Store(f"sqlite:///{db}").run_dir(run_id)
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    lines = _stopped(worker, tmp_path / "worker.log")
    assert worker.returncode == 2, lines
    assert lines[-1].startswith("error: the store") and "was deleted" in lines[-1], lines
    assert f"kept its files in {folder}" in lines[-1]
    assert not any("completed" in line for line in lines)
    assert list(folder.glob("*.pt")) and not list(folder.glob("*.tmp"))
    assert not db.exists()  # the worker wrote nothing more: no new empty store in its place


def test_a_store_made_immutable_under_a_running_worker_stops_it_in_one_line_and_the_run_ends_interrupted(tmp_path):
    db, worker, run_id = _worker_training(tmp_path)
    files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]
    with read_only(*files):
        lines = _stopped(worker, tmp_path / "worker.log")
    assert worker.returncode == 2, lines
    assert lines[-1].startswith("error: ") and "can no longer be written" in lines[-1], lines
    assert "shows as running until its lease expires" in lines[-1], lines
    _wait(lambda: _listed_status(db) == "interrupted", "the lease to expire")


def _listed_status(db: Path) -> str:
    """The first run's status as `runs list` gives it once a lease counts as expired after 1 s."""
    listed = subprocess.run([sys.executable, "-m", "kdcore", "--db", f"sqlite:///{db}", "runs", "list", "--json"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "KDCORE_LEASE_GRACE_S": "1"})
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)[0]["status"]


# ---- a full disk ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size_kb: int):
    """A real filesystem of `size_kb` at `path` (tmpfs), or a skip saying why one cannot be mounted here."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs to fill needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("where", ["artefacts", "store and artefacts"])
def test_a_full_disk_fails_the_run_with_no_space_left_and_leaves_no_partial_file(tmp_path, where):
    with small_disk(tmp_path / "small", 600) as disk:
        db = (disk if where == "store and artefacts" else tmp_path) / "kd.db"
        env = {**os.environ, "KDCORE_ARTEFACT_ROOT": str(disk / "runs")}
        result = subprocess.run([sys.executable, "-m", "kdcore", "--db", f"sqlite:///{db}", "train",
                                 "examples/digits.yaml", "--set", "teacher.epochs=2", "--set", "train.epochs=2"],
                                capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
        assert "Traceback" not in result.stderr and "inline_container" not in result.stderr, result.stderr[-3000:]
        assert result.returncode != 0
        run = Store(f"sqlite:///{db}", artefact_root=disk / "runs").get_run(1)
        assert run.status == "failed" and "no space left on the disk of" in run.error, run.error
        assert not list((disk / "runs").rglob("*.tmp")), "no half-written file is left"
