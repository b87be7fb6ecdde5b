"""`kdcore worker --ray`: queued runs as Ray tasks on a real two-node Ray cluster on this machine; the store stays the queue."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.cli import main
from kdcore.configure import build_config
from kdcore.store import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu"}}


@pytest.fixture
def ray_cluster(monkeypatch):
    """Two Ray nodes of one CPU each; their workers import this checkout's kdcore, as the driver does."""
    pytest.importorskip("ray", reason='Ray is in the test extra: pip install -e ".[test]"')
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("KDCORE_CPU_THREADS", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_a_ray_driver_drains_four_runs_over_two_nodes_each_executed_once(store, ray_cluster):
    ids = [store.create_run(build_config({**TINY, "name": f"tiny {i}", "train": {**TINY["train"], "seed": i}}))
           for i in range(4)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", KDCORE_ARTEFACT_ROOT=str(store.artefact_root))
    done = subprocess.run([sys.executable, "-m", "kdcore", "--db", store.url, "worker", "--ray", ray_cluster.address,
                           "--exit-when-idle"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [store.get_run(i) for i in ids]
    assert [r.status for r in runs] == ["completed"] * 4, [r.error for r in runs]
    assert [r.attempt for r in runs] == [1] * 4  # each claimed once
    assert len({r.worker for r in runs}) == 4  # a lease of its own per Ray task
    epochs = store.metrics_frame(ids, kind="epoch")
    assert not epochs.duplicated(["run_id", "phase", "epoch", "name"]).any()  # each executed once
    assert set(epochs["run_id"]) == set(ids)
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(f"run {i} completed" for i in ids)


def test_worker_ray_without_ray_says_how_to_install_it_and_exits_2(store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["--db", store.url, "worker", "--ray", "--exit-when-idle"]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
