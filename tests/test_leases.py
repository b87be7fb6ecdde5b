"""A killed worker's run is not stuck: other workers expire its lease, and the CLI says when that will happen.

Real worker processes killed with SIGKILL on a real SQLite store. The waits read the run with get_run only:
list_runs would expire the lease itself (with this process's grace period) and prove nothing about workers.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from kdcore.configure import build_config
from kdcore.store import Store
from tests.helpers import wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
LONG = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 2000}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256}}  # runs until stopped
DEADLINE_S = 300  # a busy machine is slow; a worker polls every second


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KDCORE_LEASE_GRACE_S"}
    env.update(PYTHONUNBUFFERED="1", KDCORE_CPU_THREADS="1", **{k: str(v) for k, v in extra.items()})
    return env


def _worker(store: Store, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", *args], cwd=ROOT,
                            env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kdcore(store: Store, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", store.url, *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=DEADLINE_S)


def _killed_mid_run(store: Store) -> int:
    """A run whose worker was killed with SIGKILL while training: still `running` in the store."""
    run_id = store.create_run(build_config(LONG))
    worker = _worker(store, "--max-runs", "1")
    wait_while_progressing(store, lambda: store.get_run(run_id).status == "running"
                           and len(store.metrics_frame([run_id])) > 0, "the run starting")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert store.get_run(run_id).status == "running"
    return run_id


def _wait_for(check, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        time.sleep(0.2)


def test_an_idle_worker_marks_a_killed_workers_run_interrupted(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = _killed_mid_run(store)
    other = _worker(store, "--no-studies", KDCORE_LEASE_GRACE_S=3)
    try:
        _wait_for(lambda: store.get_run(run_id).status != "running", "the other worker expiring the lease")
        run = store.get_run(run_id)
        assert run.status == "interrupted" and "heartbeats" in run.error
        assert (run.finished_at - run.heartbeat_at).total_seconds() >= 3  # not before the grace period
        assert other.poll() is None  # it went on polling for work
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(60)
    assert other.returncode in (0, 130), other.stderr.read()[-2000:]


def test_a_killed_run_shown_or_refused_says_when_its_lease_expires(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    run_id = _killed_mid_run(store)
    note = re.compile(r"last heartbeat (\d+) s ago; it will be marked interrupted after KDCORE_LEASE_GRACE_S "
                      r"\(600 s\)")
    shown = _kdcore(store, "runs", "show", str(run_id), KDCORE_LEASE_GRACE_S=600)
    assert shown.returncode == 0 and f"run {run_id} running" in shown.stdout, shown.stderr[-2000:]
    found = note.search(shown.stdout)
    assert found and int(found.group(1)) < 600, shown.stdout
    resume = _kdcore(store, "runs", "resume", str(run_id), KDCORE_LEASE_GRACE_S=600)
    assert resume.returncode == 1 and f"run {run_id} is running" in resume.stderr and note.search(resume.stderr), \
        resume.stderr
    assert len(resume.stderr.strip().splitlines()) == 1
    delete = _kdcore(store, "runs", "delete", str(run_id), "--yes", KDCORE_LEASE_GRACE_S=600)
    assert delete.returncode == 1 and f"run {run_id} is running" in delete.stderr and note.search(delete.stderr), \
        delete.stderr
    assert len(delete.stderr.strip().splitlines()) == 1
    assert store.get_run(run_id).status == "running"  # nothing changed
