"""The store is the queue: real worker processes, killed for real, on SQLite and on PostgreSQL.

Waits follow the runs' state in the store and give up only when nothing has moved for a
long time (tests/helpers.py), so a busy machine makes these tests slow, not red.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.configure import build_config
from kdcore.store import Store
from tests.helpers import wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256}}
LONG = {**TINY, "teacher": {"arch": "tiny_cnn", "epochs": 2000}}  # runs until stopped


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", KDCORE_CPU_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _kdcore(store: Store, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, *args], cwd=ROOT,
                            env=_env(KDCORE_ARTEFACT_ROOT=store.artefact_root, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _running_with_metrics(store: Store, run_id: int) -> bool:
    return store.get_run(run_id).status == "running" and len(store.metrics_frame([run_id])) > 0


def test_two_worker_processes_drain_twelve_runs_each_once(any_store):
    ids = [any_store.create_run(build_config({**TINY, "name": f"tiny {i}", "train": {**TINY["train"], "seed": i}}))
           for i in range(12)]
    workers = [_kdcore(any_store, "worker", "--exit-when-idle") for _ in range(2)]
    wait_while_progressing(any_store, lambda: all(w.poll() is not None for w in workers), "two workers draining the queue")
    for w in workers:
        assert w.returncode == 0, w.stderr.read()[-2000:]
    runs = [any_store.get_run(i) for i in ids]
    assert [r.status for r in runs] == ["completed"] * 12
    assert all(r.attempt == 1 for r in runs)  # each claimed once
    epochs = any_store.metrics_frame(ids, kind="epoch")
    assert not epochs.duplicated(["run_id", "phase", "epoch", "name"]).any()  # each executed once
    assert set(epochs["run_id"]) == set(ids)


def test_a_killed_worker_is_interrupted_after_the_grace_period_seen_from_another_host(any_store):
    run_id = any_store.create_run(build_config(LONG))
    worker = _kdcore(any_store, "worker", "--max-runs", "1")
    wait_while_progressing(any_store, lambda: _running_with_metrics(any_store, run_id), "the run starting")
    grace = 4

    def observed() -> dict:
        out = subprocess.run([sys.executable, "-m", "kdcore", "--db", any_store.url, "runs", "list", "--json"], cwd=ROOT,
                             env=_env(KDCORE_HOST="another-host", KDCORE_LEASE_GRACE_S=grace),
                             capture_output=True, text=True, check=True).stdout
        return next(r for r in json.loads(out) if r["id"] == run_id)

    assert observed()["status"] == "running"  # its heartbeats keep it alive
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_while_progressing(any_store, lambda: observed()["status"] != "running", "noticing the dead worker")
    seen = observed()
    assert seen["status"] == "interrupted" and "heartbeats" in seen["error"]
    run = any_store.get_run(run_id)
    assert (run.finished_at - run.heartbeat_at).total_seconds() >= grace  # not before the grace period


def test_sigterm_interrupts_the_run_at_once_with_its_metrics_flushed(any_store):
    run_id = any_store.create_run(build_config(LONG))
    queued = any_store.create_run(build_config(TINY))
    worker = _kdcore(any_store, "worker")
    wait_while_progressing(any_store, lambda: _running_with_metrics(any_store, run_id), "the run starting")
    worker.send_signal(signal.SIGTERM)
    wait_while_progressing(any_store, lambda: worker.poll() is not None, "the worker exiting")
    run = any_store.get_run(run_id)
    assert run.status == "interrupted" and "SIGTERM" in run.error
    assert len(any_store.metrics_frame([run_id], kind="step")) > 0
    assert any_store.get_run(queued).status == "queued"  # left for another worker


def test_a_cancel_from_another_process_stops_the_run_at_its_next_step(any_store):
    run_id = any_store.create_run(build_config(LONG))
    worker = _kdcore(any_store, "worker", "--max-runs", "1")
    wait_while_progressing(any_store, lambda: _running_with_metrics(any_store, run_id), "the run starting")
    cancel = subprocess.run([sys.executable, "-m", "kdcore", "--db", any_store.url, "runs", "cancel", str(run_id)],
                            cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert cancel.returncode == 0 and "next step" in cancel.stdout
    wait_while_progressing(any_store, lambda: any_store.get_run(run_id).status != "running", "the run stopping")
    assert any_store.get_run(run_id).status == "cancelled"
    wait_while_progressing(any_store, lambda: worker.poll() is not None, "the worker exiting after its one run")
    assert worker.returncode == 0


# Each process imports once, then opens a new store per attempt, all four at the same moment.
OPEN = ("import sys, time\n"
        "from pathlib import Path\n"
        "from kdcore.store import Store\n"
        "print('ready', flush=True)\n"
        "for url, go in zip(sys.argv[2::2], sys.argv[3::2]):\n"
        "    while not Path(go).exists(): time.sleep(0.002)\n"
        "    print(Store(url, artefact_root=sys.argv[1]).count_runs(), flush=True)\n")


@pytest.mark.parametrize("backend, attempts", [("sqlite", 20), ("postgresql", 20), ("sqlite-0.1.0", 5)])
def test_four_processes_opening_one_store_at_once_never_fail(backend, attempts, tmp_path, request):
    runs_before = "2" if backend == "sqlite-0.1.0" else "0"
    stores = []
    for attempt in range(attempts):
        if backend == "sqlite-0.1.0":  # four processes upgrading the same old store at once
            shutil.copytree(Path(__file__).parent / "fixtures" / "store-0.1.0", tmp_path / f"old{attempt}")
            url = f"sqlite:///{tmp_path}/old{attempt}/kdcore.db"
        elif backend == "sqlite":
            url = f"sqlite:///{tmp_path}/new{attempt}.db"
        else:
            url = request.getfixturevalue("postgres_server")()
        stores += [url, str(tmp_path / f"go{attempt}")]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(tmp_path), *stores], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4  # all imported, waiting
        for attempt in range(attempts):
            Path(stores[2 * attempt + 1]).touch()  # all four open the new store at once
            counts = [p.stdout.readline().strip() for p in procs]
            if counts != [runs_before] * 4:
                for p in procs:
                    p.kill()
                errors = [p.communicate()[1][-1500:] for p in procs]
                pytest.fail(f"attempt {attempt}: counts {counts}; {[e for e in errors if e]}")
        assert [p.wait(timeout=120) for p in procs] == [0] * 4
    finally:
        for p in procs:
            p.kill()
