"""What a resume keeps and refuses: every attempt recorded, and no silent retraining when the run's folder is gone.

Real worker processes stopped with SIGTERM, real SQLite stores, real training on the digits dataset.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from kdcore.configure import build_config
from kdcore.store import Store
from tests.helpers import STALL_S, wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"name": "resumable", "dataset": {"name": "digits", "val_fraction": 0.15},
          "teacher": {"arch": "tiny_cnn", "epochs": 2},
          "student": {"arch": "mlp", "options": {"hidden": [64]}},
          "train": {"epochs": 30, "batch_size": 64, "lr": 0.003, "seed": 5}}


def _env(threads: int) -> dict:
    return dict(os.environ, KDCORE_CPU_THREADS=str(threads), PYTHONUNBUFFERED="1")


def _kdcore(store: Store, *args, threads: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", store.url, *args], cwd=ROOT, env=_env(threads),
                          capture_output=True, text=True, timeout=STALL_S * 2)


def _stopped_in_the_student_phase(store: Store) -> int:
    """A run whose worker (one CPU thread) was stopped with SIGTERM after its teacher and two student epochs."""
    run_id = store.create_run(build_config(CONFIG))
    worker = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--max-runs", "1"],
                              cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epochs = lambda: store.metrics_frame([run_id], kind="epoch").query("phase == 'student'")["epoch"]  # noqa: E731
    wait_while_progressing(store, lambda: (epochs().max() if len(epochs()) else 0) >= 2, "the student phase")
    worker.send_signal(signal.SIGTERM)
    worker.wait(STALL_S)
    assert store.get_run(run_id).status == "interrupted"
    return run_id


def _row(store: Store, run_id: int) -> dict:
    return store.get_run(run_id).model_dump()


def test_resuming_a_run_whose_folder_is_gone_is_refused_and_changes_nothing(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = _stopped_in_the_student_phase(store)
    shutil.rmtree(store.run_dir(run_id))
    before = _row(store, run_id)
    out = _kdcore(store, "runs", "resume", str(run_id))
    assert out.returncode == 1, out.stdout[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"run {run_id}'s folder {store.run_dir(run_id)} is gone" in out.stderr
    assert "its teacher included" in out.stderr and "kdcore train" in out.stderr
    assert _row(store, run_id) == before and not store.run_dir(run_id).exists()
    # a worker resuming interrupted runs by itself leaves it too, and says why once
    worker = _kdcore(store, "worker", "--resume-interrupted", "--exit-when-idle", "--no-studies")
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert worker.stderr.count(f"not resuming run {run_id}'s folder") == 1, worker.stderr
    assert _row(store, run_id) == before and not store.run_dir(run_id).exists()


def test_a_run_resumed_on_another_thread_count_records_both_attempts_and_their_total_time(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = _stopped_in_the_student_phase(store)
    resumed = _kdcore(store, "runs", "resume", str(run_id), threads=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = store.get_run(run_id)
    assert run.status == "completed" and run.attempt == 2
    first, second = run.summary["attempts"]
    assert (first["attempt"], first["status"], first["device"], first["threads"]) == \
        (1, "interrupted", "CPU (1 thread)", 1)
    assert (second["attempt"], second["status"], second["device"], second["threads"]) == \
        (2, "completed", "CPU (2 threads)", 2)
    assert first["seconds"] > 0 and second["seconds"] > 0
    assert first["ended_at"] <= second["started_at"]
    assert run.summary["seconds"] == round(first["seconds"] + second["seconds"], 2)
    shown = _kdcore(store, "runs", "show", str(run_id))
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "attempts: 2" in shown.stdout
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["1", "interrupted", "on", "CPU", "(1", "thread),", "1", "CPU", "thread(s),"] in [li[:9] for li in lines]
    assert ["2", "completed", "on", "CPU", "(2", "threads),", "2", "CPU", "thread(s),"] in [li[:9] for li in lines]
    listed = json.loads(_kdcore(store, "runs", "show", str(run_id), "--json").stdout)
    assert len(listed["summary"]["attempts"]) == 2


def test_an_attempt_whose_worker_was_killed_is_listed_with_its_device_and_no_time(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = store.create_run(build_config(CONFIG))
    worker = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--max-runs", "1"],
                              cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_while_progressing(store, lambda: store.get_run(run_id).phase == "student", "the teacher finishing")
    worker.send_signal(signal.SIGKILL)  # it records nothing more
    worker.wait()
    store.expire_leases(grace_s=0, force=True)  # as any process does once the grace period is over
    resumed = _kdcore(store, "runs", "resume", str(run_id), threads=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = store.get_run(run_id)
    killed, second = run.summary["attempts"]
    assert (killed["attempt"], killed["status"], killed["device"], killed["seconds"]) == \
        (1, "interrupted", "CPU (1 thread)", None)
    assert "its worker died before recording it" in killed["note"]
    assert (second["attempt"], second["status"], second["device"]) == (2, "completed", "CPU (2 threads)")
    assert run.summary["seconds"] == second["seconds"]  # the killed attempt's time is not known
    shown = _kdcore(store, "runs", "show", str(run_id)).stdout
    assert "interrupted on CPU (1 thread), time not known" in shown, shown
