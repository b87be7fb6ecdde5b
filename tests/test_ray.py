"""`kdcore worker --ray`: queued runs as Ray tasks on a real two-node Ray cluster on this machine; the store stays
the queue."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdcore.cli import main
from kdcore.configure import build_config
from kdcore.store import Store
from tests.helpers import require_extra, wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu"}}


@pytest.fixture
def ray_cluster(monkeypatch):
    """Two Ray nodes of one CPU each; their workers import this checkout's kdcore, as the driver does."""
    require_extra("ray")
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("KDCORE_CPU_THREADS", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.worker_node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_a_ray_driver_drains_eight_runs_over_two_nodes_each_executed_once(store, ray_cluster, tmp_path):
    ids = [store.create_run(build_config({**TINY, "name": f"tiny {i}", "train": {**TINY["train"], "seed": i}}))
           for i in range(8)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # PYTHONPATH (the fixture's) finds this checkout from anywhere
    relative = "sqlite:///" + os.path.relpath(store.url.removeprefix("sqlite:///"), tmp_path)  # the tasks' cwd differs
    done = subprocess.run([sys.executable, "-m", "kdcore", "--db", relative, "worker", "--ray", ray_cluster.address,
                           "--exit-when-idle"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [store.get_run(i) for i in ids]
    assert [r.status for r in runs] == ["completed"] * 8, [r.error for r in runs]
    assert [r.attempt for r in runs] == [1] * 8  # each claimed once
    assert len({r.worker for r in runs}) == 8  # a lease of its own per Ray task
    epochs = store.metrics_frame(ids, kind="epoch")
    assert not epochs.duplicated(["run_id", "phase", "epoch", "name"]).any()  # each executed once
    assert set(epochs["run_id"]) == set(ids)
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(f"run {i} completed" for i in ids)


def _driver(store: Store, address: str, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", KDCORE_ARTEFACT_ROOT=str(store.artefact_root))
    return subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--ray", address,
                             "--exit-when-idle", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _statuses(store: Store, ids: list[int]) -> list[str]:
    return [store.get_run(i).status for i in ids]


def test_a_lost_ray_node_leaves_its_run_interrupted_and_resumable_and_a_cancel_ends_the_other(store, ray_cluster):
    """One run per node: the worker node is removed mid-run, the other run is cancelled from this process."""
    config = {**TINY, "teacher": {"arch": "tiny_cnn", "epochs": 100}}
    ids = [store.create_run(build_config({**config, "name": f"long {i}"})) for i in range(2)]
    driver = _driver(store, ray_cluster.address)
    wait_while_progressing(store, lambda: all(store.get_run(i).status == "running" for i in ids)
                           and set(store.metrics_frame(ids)["run_id"]) == set(ids), "both runs starting")
    ray_cluster.remove_node(ray_cluster.worker_node)  # the node dies with its run in flight
    wait_while_progressing(store, lambda: "interrupted" in _statuses(store, ids), "the lost node's run",
                           stall_s=120)
    lost = next(i for i in ids if store.get_run(i).status == "interrupted")
    other = next(i for i in ids if i != lost)
    assert store.request_cancel(other) == "requested"
    wait_while_progressing(store, lambda: driver.poll() is not None, "the driver ending")
    assert driver.returncode == 0, driver.stderr.read()[-3000:]
    assert store.get_run(other).status == "cancelled"
    assert "its Ray task was lost" in store.get_run(lost).error  # told by Ray at once, not by the lease's expiry
    assert "\x1b" not in store.get_run(lost).error and "\n" not in store.get_run(lost).error  # one plain line
    resumed = _driver(store, ray_cluster.address, "--resume-interrupted")  # on the node that is left
    wait_while_progressing(store, lambda: resumed.poll() is not None, "the interrupted run resuming")
    assert resumed.returncode == 0, resumed.stderr.read()[-3000:]
    run = store.get_run(lost)
    assert (run.status, run.attempt) == ("completed", 2), run.error
    epochs = store.metrics_frame([lost], kind="epoch")
    assert len(epochs.query("phase == 'teacher'")) > 0
    assert not epochs.duplicated(["phase", "epoch", "name"]).any()  # resumed from its last epoch: none twice


def test_worker_ray_without_ray_says_how_to_install_it_and_exits_2(store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["--db", store.url, "worker", "--ray", "--exit-when-idle"]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err


def test_a_ray_driver_stopped_with_sigint_has_its_tasks_record_their_runs_interrupted(store, ray_cluster):
    run_id = store.create_run(build_config({**TINY, "teacher": {"arch": "tiny_cnn", "epochs": 2000}}))
    driver = _driver(store, ray_cluster.address)
    wait_while_progressing(store, lambda: store.get_run(run_id).status == "running"
                           and len(store.metrics_frame([run_id])) > 0, "the run starting")
    driver.send_signal(signal.SIGINT)
    wait_while_progressing(store, lambda: driver.poll() is not None, "the driver ending")
    assert driver.returncode == 130, driver.stderr.read()[-3000:]
    run = store.get_run(run_id)
    assert run.status == "interrupted"
    assert "the worker was stopped" in run.error  # recorded by the task itself at its next step, not by a lost lease


def test_a_studys_trials_run_as_ray_tasks(store, ray_cluster, tmp_path):
    """`kdcore tune --workers 0` queues the trials; the Ray driver runs each as a task; the study ends with a best."""
    config, space = tmp_path / "config.yaml", tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 2}}))
    space.write_text(yaml.safe_dump({"distill.temperature": {"choices": [2.0, 4.0]},
                                     "distill.alpha": {"choices": [0.5, 0.9]}}))
    env = dict(os.environ, PYTHONUNBUFFERED="1", KDCORE_ARTEFACT_ROOT=str(store.artefact_root))
    tune = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "tune", str(config), "--space",
                             str(space), "--trials", "4", "--sampler", "grid", "--pruner", "none", "--parallel", "2",
                             "--workers", "0",
                             "--name", "on-ray"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    driver = subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--ray",
                               ray_cluster.address, "--no-studies"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_while_progressing(store, lambda: tune.poll() is not None, "the study's trials")
    finally:
        driver.send_signal(signal.SIGTERM)
        driver.wait(120)
    assert tune.returncode == 0, tune.stderr.read()[-3000:]
    study = store.get_study("on-ray")
    trials = [store.get_run(r) for r in store.trial_runs(study.id).values()]
    assert [(r.status, r.attempt) for r in trials] == [("completed", 1)] * 4, [r.error for r in trials]
    assert all(f":{driver.pid}:ray" in r.worker for r in trials)  # each claimed by the Ray driver for a task


def test_the_dashboards_manager_sends_its_runs_to_ray_when_kdcore_ray_address_is_set(store, ray_cluster, monkeypatch):
    from kdcore.jobs import JobManager, RunService

    monkeypatch.setenv("KDCORE_RAY_ADDRESS", ray_cluster.address)
    manager = JobManager(store, workers="process")
    try:
        assert "Ray cluster" in manager.describe_workers()
        run_id = RunService(store, wake=manager.wake).submit(build_config({**TINY, "name": "from the dashboard"}))
        wait_while_progressing(store, lambda: store.get_run(run_id).status == "completed", "the run on Ray")
        assert ":ray" in store.get_run(run_id).worker  # claimed by the Ray driver, trained in a Ray task
    finally:
        manager.shutdown()
