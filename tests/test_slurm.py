"""`kdcore slurm`: workers as a submitit job array, on a real store; submitit's local executor stands in for Slurm."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kdcore.cli import main
from kdcore.store import Store
from tests.helpers import require_extra

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "teacher.epochs=1", "--set", "train.epochs=1", "--set", "baseline=false"]


def _kdcore(store: Store, *args, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", KDCORE_CPU_THREADS="1", KDCORE_ARTEFACT_ROOT=str(store.artefact_root))
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", store.url, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_two_local_submitit_jobs_drain_three_queued_runs_each_once(store, tmp_path):
    require_extra("submitit")
    ids = []
    for seed in range(3):
        done = _kdcore(store, "submit", "examples/digits.yaml", *QUICK, "--set", f"train.seed={seed}", timeout=120)
        assert done.returncode == 0, done.stderr
        ids.append(int(done.stdout.split()[0]))
    done = _kdcore(store, "slurm", "--jobs", "2", "--local", "--folder", str(tmp_path / "jobs"), "--wait",
                   timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.split()) == 2  # the two job ids
    runs = [store.get_run(i) for i in ids]
    assert [r.status for r in runs] == ["completed"] * 3
    assert [r.attempt for r in runs] == [1, 1, 1]  # each claimed once
    epochs = store.metrics_frame(ids, kind="epoch")
    assert not epochs.duplicated(["run_id", "phase", "epoch", "name"]).any()  # each executed once
    assert set(epochs["run_id"]) == set(ids)
    assert all(store.run_dir(i).is_relative_to(store.artefact_root) for i in ids)


def test_slurm_without_submitit_says_how_to_install_it_and_exits_2(store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert main(["--db", store.url, "slurm", "--jobs", "1", "--local"]) == 2
    assert 'pip install -e ".[slurm]"' in capsys.readouterr().err


def test_slurm_without_sbatch_or_local_is_refused_before_anything_is_submitted(store, tmp_path, monkeypatch, capsys):
    require_extra("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    assert main(["--db", store.url, "slurm", "--jobs", "2", "--folder", str(tmp_path / "jobs")]) == 2
    assert "sbatch" in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists()


def test_a_job_at_its_time_limit_records_its_run_interrupted_at_once(store, tmp_path):
    """submitit's warning signal before the time limit (USR2; the local executor sends it 30 s before a 1 minute
    limit) stops the worker's run at its next step, recorded interrupted with its metrics, not left to its lease."""
    require_extra("submitit")
    done = _kdcore(store, "submit", "examples/digits.yaml", "--set", "teacher.epochs=5000", "--set", "baseline=false",
                   timeout=120)
    run_id = int(done.stdout.split()[0])
    done = _kdcore(store, "slurm", "--jobs", "1", "--local", "--time", "1", "--folder", str(tmp_path / "jobs"),
                   "--wait", timeout=300)
    assert done.returncode == 1 and "worker exited with 130" in done.stderr, done.stderr[-3000:]
    run = store.get_run(run_id)
    assert run.status == "interrupted" and "the worker was stopped" in run.error, (run.status, run.error)
    assert len(store.metrics_frame([run_id], kind="epoch")) > 0
