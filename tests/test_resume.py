"""Pick up where it stopped: a worker killed for real mid-run, resumed, ends as if never stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcore.configure import build_config
from kdcore.jobs import resumable
from kdcore.store import Store
from tests.helpers import STALL_S, wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
# dropout, a cosine schedule and Adam: everything a resume must restore to land on the same weights
CONFIG = {"name": "resumable", "dataset": {"name": "digits", "val_fraction": 0.15},
          "teacher": {"arch": "tiny_cnn", "epochs": 3},
          "student": {"arch": "mlp", "options": {"hidden": [64], "dropout": 0.2}},
          "train": {"epochs": 40, "batch_size": 64, "lr": 0.003, "seed": 5}}
ENV = dict(os.environ, KDCORE_CPU_THREADS="1", PYTHONUNBUFFERED="1")  # one thread on every side: same rounding


def _kdcore(db: str, *args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, **kw)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_worker_killed_in_the_student_phase_resumes_to_the_uninterrupted_weights(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(CONFIG))  # JSON is YAML
    reference = Store(f"sqlite:///{tmp_path}/reference/runs.db")
    done = _kdcore(reference.url, "train", str(config))
    assert done.returncode == 0, done.stderr[-2000:]

    store = Store(f"sqlite:///{tmp_path}/resumed/runs.db")
    run_id = store.create_run(build_config(CONFIG))
    worker = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--max-runs", "1"],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    student_epochs = lambda: store.metrics_frame([run_id], kind="epoch").query("phase == 'student'")["epoch"]  # noqa
    wait_while_progressing(store, lambda: (student_epochs().max() if len(student_epochs()) else 0) >= 3, "the student phase")
    worker.send_signal(signal.SIGKILL)  # no handler runs: the state on disk is whatever the last epoch saved
    worker.wait()
    assert store.get_run(run_id).status == "running"
    assert (store.run_dir(run_id) / "student_state.pt").is_file()

    # a second later its lease has expired for a reader with a 1 s grace period; resume it here
    env = dict(ENV, KDCORE_LEASE_GRACE_S="1")
    wait_while_progressing(store, lambda: json.loads(_kdcore(store.url, "runs", "show", str(run_id), "--json", env=env).stdout)
          ["status"] == "interrupted", "the dead worker's lease expiring")
    assert resumable(store.get_run(run_id)) is None
    resumed = _kdcore(store.url, "runs", "resume", str(run_id), env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"run {run_id} completed" in resumed.stdout

    run = store.get_run(run_id)
    assert run.status == "completed" and run.attempt == 2
    epochs = store.metrics_frame([run_id], kind="epoch")
    assert not epochs.duplicated(["phase", "epoch", "name"]).any()  # each epoch stored once
    assert sorted(epochs.query("phase == 'teacher' and name == 'val_acc'")["epoch"]) == [1, 2, 3]  # trained once
    assert sorted(epochs.query("phase == 'student' and name == 'val_acc'")["epoch"]) == list(range(1, 41))
    steps = store.metrics_frame([run_id], kind="step")
    assert not steps.duplicated(["phase", "step", "name"]).any()  # the killed partial epoch's rows replaced
    ref_dir = reference.run_dir(reference.list_runs()[0].id)
    for phase in ("teacher", "student", "baseline"):
        ours, theirs = _weights(store.run_dir(run_id) / f"{phase}.pt"), _weights(ref_dir / f"{phase}.pt")
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), f"{phase} weights differ from the uninterrupted run"
    assert run.student_test_acc == reference.list_runs()[0].student_test_acc


def test_a_stopped_run_keeps_its_finished_phases_and_files(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = store.create_run(build_config({**CONFIG, "train": {**CONFIG["train"], "epochs": 2000}}))
    worker = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--max-runs", "1"],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_while_progressing(store, lambda: store.get_run(run_id).phase == "student", "the teacher finishing")
    worker.send_signal(signal.SIGTERM)
    worker.wait(STALL_S)
    run = store.get_run(run_id)
    assert run.status == "interrupted"
    assert run.teacher_test_acc is not None and 0 < run.summary["teacher_test_acc"] <= 1  # the finished phase
    assert "teacher_weights" in store.artefacts(run_id) and "student_last_weights" in store.artefacts(run_id)
    # its finished teacher serves another run
    reuse = build_config({**CONFIG, "teacher": {"arch": "tiny_cnn", "source": "run", "run_id": run_id},
                          "train": {**CONFIG["train"], "epochs": 1}})
    from kdcore.jobs import run_here

    _, status = run_here(store, reuse)
    assert status == "completed"


def test_a_diverged_run_is_not_resumed_with_the_same_settings(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = store.create_run(build_config(CONFIG))
    store.claim("w:1", run_id=run_id)
    store.finish_run(run_id, "failed", error="student: the loss became nan at epoch 3, step 40; lower train.lr",
                     worker="w:1", failure="diverged")
    shown = _kdcore(store.url, "runs", "resume", str(run_id))
    assert shown.returncode == 1 and "diverged" in shown.stderr and "lower train.lr" in shown.stderr
    assert store.get_run(run_id).status == "failed"
    completed = store.create_run(build_config(CONFIG))
    store.claim("w:1", run_id=completed)
    store.finish_run(completed, "completed", {}, worker="w:1")
    again = _kdcore(store.url, "runs", "resume", str(completed))
    assert again.returncode == 1 and "only an interrupted, cancelled or failed run" in again.stderr


@pytest.mark.parametrize("flag", ["--resume-interrupted"])
def test_a_worker_can_resume_interrupted_runs_by_itself(tmp_path, flag):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = store.create_run(build_config({**CONFIG, "train": {**CONFIG["train"], "epochs": 3}}))
    store.claim("gone:1", run_id=run_id)
    store.finish_run(run_id, "interrupted", error="its worker stopped", worker="gone:1")
    out = _kdcore(store.url, "worker", flag, "--exit-when-idle", timeout=STALL_S * 2)
    assert out.returncode == 0, out.stderr[-2000:]
    assert store.get_run(run_id).status == "completed" and store.get_run(run_id).attempt == 2


def test_a_run_that_diverges_for_real_is_stored_as_diverged_and_refused_a_resume(tmp_path):
    from kdcore.jobs import run_here

    store = Store(f"sqlite:///{tmp_path}/runs.db")
    config = build_config({**CONFIG, "teacher": {"arch": "tiny_cnn", "epochs": 1},
                           "train": {**CONFIG["train"], "epochs": 3, "batch_size": 32, "optimizer": "sgd",
                                     "lr": 10.0, "momentum": 0.0, "weight_decay": 1.0}})  # w <- -9 w each step
    run_id, status = run_here(store, config)
    run = store.get_run(run_id)
    assert status == "failed" and run.failure == "diverged", (run.failure, run.error)
    assert "diverged" in resumable(run, store)


def test_a_store_from_before_the_failure_field_knows_its_diverged_runs(tmp_path):
    """Schema 0003 kept a failure's kind in its words only: the upgrade reads them once into the field."""
    import shutil
    import sqlite3

    folder = Path(shutil.copytree(ROOT / "tests" / "fixtures" / "store-0.3", tmp_path / "store"))
    with sqlite3.connect(folder / "kdcore.db") as db:
        db.execute("UPDATE runs SET status='failed', error='student: the loss became nan at epoch 3, step 4' "
                   "WHERE id=2")
        db.execute("UPDATE runs SET status='failed', error='the data folder is missing' WHERE id=3")
    store = Store(f"sqlite:///{folder / 'kdcore.db'}")
    assert store.get_run(2).failure == "diverged" and store.get_run(3).failure is None
    assert "diverged" in resumable(store.get_run(2), store) and resumable(store.get_run(3), store) is None


def test_resuming_here_takes_the_run_without_a_trip_through_the_queue(tmp_path):
    from kdcore.jobs import ActionRefused, RunService

    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = store.create_run(build_config(CONFIG))
    store.claim("gone:1", run_id=run_id)
    store.finish_run(run_id, "interrupted", error="its worker stopped", worker="gone:1")
    RunService(store).resume(run_id, here="cli:2")
    run = store.get_run(run_id)
    assert (run.status, run.worker, run.attempt) == ("running", "cli:2", 2)
    assert store.claim("other:3") is None  # it never sat in the queue for another worker to take
    with pytest.raises(ActionRefused, match="only an interrupted, cancelled or failed run"):
        RunService(store).resume(run_id, here="cli:4")
