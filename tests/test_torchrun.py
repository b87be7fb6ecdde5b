"""One run on two processes under torchrun (gloo on CPU): the weights of one process, and a kill resumed.

Tolerance: with plain SGD and fp32, the final weights of a two-process run match a single-process
run with the same global batch and seed within 1e-5 (absolute, per weight; measured about 1e-7).
They are not bit-for-bit equal: the all-reduce sums the two halves of each batch's gradient in
another order than one process does. Adam amplifies such rounding where gradients are near zero,
so these runs use SGD.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcore.store import Store
from tests.helpers import wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
CONFIG = {"name": "ddp", "dataset": {"name": "digits", "val_fraction": 0.15},
          "teacher": {"arch": "mlp", "options": {"hidden": [64]}, "epochs": 2},
          "student": {"arch": "mlp", "options": {"hidden": [32]}},
          "train": {"epochs": 12, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "seed": 5, "amp": False},
          "baseline": False}
ENV = {"KDCORE_CPU_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread per process: same rounding each time


def _env():
    import os

    return dict(os.environ, **ENV)


def _kdcore(db: str, *args):
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _weights(store: Store, run_id: int, phase: str) -> dict:
    return torch.load(store.run_dir(run_id) / f"{phase}.pt", weights_only=True)["state_dict"]


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "ddp.yaml"
    path.write_text(json.dumps(CONFIG))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def one_process(config_file, tmp_path_factory) -> Store:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('one')}/runs.db")
    done = _kdcore(store.url, "train", str(config_file))
    assert done.returncode == 0, done.stderr[-2000:]
    return store


def test_two_processes_train_to_the_weights_of_one_within_the_tolerance(config_file, one_process, tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    done = _kdcore(store.url, "train", str(config_file), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    run = store.get_run(1)
    assert run.status == "completed"
    assert run.summary["world_size"] == 2 and run.summary["effective_batch"] == 64
    assert one_process.get_run(1).summary["world_size"] == 1
    for phase in ("teacher", "student"):
        difference = _largest_difference(_weights(store, 1, phase), _weights(one_process, 1, phase))
        assert difference <= TOLERANCE, f"{phase}: {difference}"
    # rank 0 alone reported: one epoch row per epoch and phase, not one per rank
    epochs = store.metrics_frame([1], kind="epoch")
    assert len(epochs) == len(one_process.metrics_frame([1], kind="epoch"))
    assert len(epochs.drop_duplicates(["phase", "epoch"])) == 2 + 12


def test_a_batch_that_does_not_divide_over_the_processes_is_refused_in_one_line(config_file, tmp_path):
    done = _kdcore(f"sqlite:///{tmp_path}/runs.db", "train", str(config_file), "--nproc", "2",
                   "--set", "train.batch_size=63")
    assert done.returncode == 2
    assert "does not divide over train.nproc 2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_two_process_run_stopped_mid_way_resumes_on_two_processes(config_file, one_process, tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    launcher = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "train", str(config_file),
                                 "--nproc", "2"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    student_epochs = lambda: store.metrics_frame([1], kind="epoch").query("phase == 'student'")["epoch"]  # noqa
    try:
        wait_while_progressing(store, lambda: bool(store.list_runs()) and len(student_epochs()) >= 1,
                               "the two-process student phase")
        launcher.send_signal(signal.SIGTERM)  # the launcher passes it to torchrun, torchrun to every rank
        launcher.wait(timeout=120)
    finally:
        launcher.kill()
    run = store.get_run(1)
    assert run.status == "interrupted", run.error
    assert (store.run_dir(1) / "student_state.pt").is_file()
    stopped_at = int(student_epochs().max())
    assert stopped_at < 12

    resumed = _kdcore(store.url, "runs", "resume", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = store.get_run(1)
    assert run.status == "completed" and run.summary["world_size"] == 2
    student = store.metrics_frame([1], kind="epoch").query("phase == 'student'")
    assert sorted(student["epoch"].unique()) == list(range(1, 13))
    # both ranks loaded rank 0's saved state: the result is the uninterrupted one, within the tolerance
    difference = _largest_difference(_weights(store, 1, "student"), _weights(one_process, 1, "student"))
    assert difference <= TOLERANCE, difference
