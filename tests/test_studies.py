"""Studies: real Optuna over real digits runs, on SQLite and PostgreSQL, with real worker processes killed for real.

Waits follow the runs' state in the store (tests/helpers.py): a busy machine makes these slow, not red.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdcore.configure import build_config
from kdcore.engine.run import read_finished
from kdcore.store import Store
from kdcore.studies import SpaceError, StudyDriver, StudyError, TestSplitRead, create_study, parse_space
from kdcore.studies.objectives import OBJECTIVES, Objective, ValidationView, register_objective
from kdcore.studies.view import describe_study
from tests.helpers import wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
BASE = {"dataset": {"name": "digits", "val_fraction": 0.15}, "teacher": {"arch": "small_cnn", "epochs": 3},
        "student": {"arch": "mlp_tiny"}, "train": {"epochs": 40, "batch_size": 64, "lr": 0.003}}
# 12 grid points, half of them at a learning rate too small to learn: the median pruner stops those
GRID = {"distill.alpha": {"choices": [0.3, 0.6, 0.9]}, "distill.temperature": {"choices": [2.0, 4.0]},
        "train.lr": {"choices": [0.003, 0.00001]}}
SEARCH = {"distill.method": {"choices": ["soft", "dist"]}, "distill.temperature": {"low": 1.0, "high": 8.0, "log": True},
          "distill.alpha": {"low": 0.3, "high": 0.95}}


def _files(tmp_path: Path, space: dict, **base) -> tuple[Path, Path]:
    config, space_file = tmp_path / "config.yaml", tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump({**BASE, **base}))
    space_file.write_text(yaml.safe_dump(space))
    return config, space_file


def _env(store: Store, **extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", KDCORE_CPU_THREADS="1",
               KDCORE_ARTEFACT_ROOT=str(store.artefact_root))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _kdcore(store: Store, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdcore", "--db", store.url, *map(str, args)], cwd=ROOT,
                            env=_env(store, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(store: Store, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", store.url, *map(str, args)], cwd=ROOT,
                          env=_env(store, **env), capture_output=True, text=True)


def _trial_runs(store: Store, name: str) -> list:
    study = store.get_study(name)
    return [store.get_run(r) for r in store.trial_runs(study.id).values()]


# ---- the space is checked whole before any trial runs -----------------------------------------------
@pytest.mark.parametrize("space, message", [
    ({"distill.temprature": {"low": 1, "high": 4}}, "distill.temprature: unknown key"),
    ({"distill.temperature": {"low": 4.0, "high": 4.0}}, "distill.temperature: the range 4 to 4 is empty"),
    ({"distill.alpha": {"low": 0.9, "high": 0.3}}, "distill.alpha: low (0.9) is above high (0.3)"),
    ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "train.lr: a log-scale range must lie above zero"),
    ({"distill.method": {"choices": ["soft", "telepathy"]}}, "distill.method: unknown method 'telepathy'"),
    ({"distill.options.nckd_weight": {"low": 1, "high": 8}}, "distill.options.nckd_weight: no method this study can "
                                                             "pick (soft) has an option 'nckd_weight'"),
    ({"distill.method": {"choices": ["soft", "dist"]}, "distill.options.dkd.nckd_weight": {"low": 1, "high": 8}},
     "distill.options.dkd.nckd_weight: the study never picks dkd"),
    ({"distill.method": {"choices": ["at", "fitnets"]}, "distill.options.stages": {"choices": [1, 2]}},
     "distill.options.stages: at and fitnets each have an option 'stages'"),
    ({"distill.alpha": {"low": 0.5, "high": 1.5}}, "distill.alpha: 1.5 does not make a valid config"),
    ({"distill": {"low": 0.5, "high": 1.5}}, "distill: a section, not a setting"),
    ({"train.seed": {"low": 0, "high": 9}}, "train.seed: cannot be searched: a study picks settings; seeds are for "
                                            "the confirmation"),
    ({"distill.alpha": {"low": 0.1, "high": 0.9, "lg": True}}, "distill.alpha: unknown field(s) lg"),
    ({"distill.alpha": [0.1, 0.9]}, "distill.alpha: give a range"),
    ({}, "must map at least one config key"),
])
def test_a_bad_space_is_refused_naming_its_key(space, message):
    with pytest.raises(SpaceError) as refused:
        parse_space(space, build_config(BASE))
    assert message in str(refused.value)


def test_method_options_are_set_only_in_trials_of_their_method(store):
    space = parse_space({"distill.method": {"choices": ["soft", "dkd"]},
                         "distill.options.nckd_weight": {"low": 1.0, "high": 9.0}}, build_config(BASE))
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"soft": set(), "dkd": set()}
    for _ in range(20):
        params = space.sample(study.ask(), "soft")
        seen[params["distill.method"]].update(params)
    assert seen["soft"] == {"distill.method"} and seen["dkd"] == {"distill.method", "distill.options.nckd_weight"}


def test_bad_counts_and_a_taken_name_are_refused_before_anything_is_stored(store, tmp_path):
    config, space = _files(tmp_path, SEARCH)
    for count in ("0", "-3"):
        refused = _run(store, "tune", config, "--space", space, "--trials", count, "--name", "s")
        assert refused.returncode == 2 and "--trials must be" in refused.stderr, refused.stderr
    assert store.list_studies() == []
    create_study(store, "s", build_config(BASE), SEARCH, trials=2)
    again = _run(store, "tune", config, "--space", space, "--trials", "2", "--name", "s")
    assert again.returncode == 2 and "a study named 's' already exists" in again.stderr
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("distill.alpha: {low: 0.9, high: 0.1}\n")
    refused = _run(store, "tune", config, "--space", bad_space, "--trials", "2", "--name", "t")
    assert refused.returncode == 2 and "distill.alpha: low (0.9) is above high (0.1)" in refused.stderr
    assert [s.name for s in store.list_studies()] == ["s"] and store.list_runs() == []


def test_confirmation_seeds_must_be_fresh(store):
    with pytest.raises(StudyError, match="includes seed 1000, which the trials train with"):
        create_study(store, "s", build_config(BASE), SEARCH, trials=2, confirm_seeds="998-1002")
    assert store.list_studies() == []


# ---- validation only -----------------------------------------------------------------------------------
def test_objectives_see_validation_figures_and_a_test_figure_raises():
    summary = {"student_best_val_acc": 0.9, "baseline_best_val_acc": 0.8, "student_test_acc": 0.5,
               "baseline_test_acc": 0.6, "kd_gain": -0.1, "val_size": 100}
    view = ValidationView(summary)
    assert set(view) == {"student_best_val_acc", "baseline_best_val_acc", "val_size"}
    for name in OBJECTIVES.names():
        assert OBJECTIVES.get(name).read(view) in (pytest.approx(0.1), 0.9)  # from validation, never test
    with pytest.raises(TestSplitRead):
        view["student_test_acc"]
    with pytest.raises(KeyError):
        view["kd_gain"]  # the test split's gain, by another name


def test_a_planted_objective_that_reads_test_stops_the_study_before_it_chooses(store):
    planted = register_objective(Objective(
        name="planted_test_reader", label="test accuracy", description="reads test", needs_baseline=False,
        in_points=False, read=lambda v: v["student_test_acc"]))
    try:
        create_study(store, "peek", build_config({**BASE, "train": {**BASE["train"], "epochs": 2}}), SEARCH,
                     trials=3, objective=planted.name, pruner="none")
        from kdcore.jobs import Worker
        import threading

        driver, stop = StudyDriver(store, "peek"), threading.Event()
        driver.step()  # queues trial 0
        Worker(store, "cpu").run(stop, max_runs=1, exit_when_idle=True)
        with pytest.raises(TestSplitRead, match="student_test_acc"):
            driver.step()
        study = store.get_study("peek")
        assert study.status == "stopped" and "test split" in study.reason
        assert describe_study(store, "peek")["best"] is None  # nothing was chosen
    finally:
        OBJECTIVES._entries.pop("planted_test_reader")


# ---- a study of real runs: pruning, two worker processes, a worker killed mid-trial ---------------------
def test_a_study_of_twelve_trials_shared_by_two_workers_survives_one_killed(any_store, tmp_path):
    store = any_store
    config, space = _files(tmp_path, GRID)
    grace = 3
    driver = _kdcore(store, "tune", config, "--space", space, "--trials", 12, "--sampler", "grid", "--parallel", 2,
                     "--workers", 0, "--name", "grid", KDCORE_LEASE_GRACE_S=grace)
    workers = [_kdcore(store, "worker", "--no-studies", KDCORE_LEASE_GRACE_S=grace) for _ in range(2)]
    pids = {w.pid: w for w in workers}
    killed: list[int] = []

    def kill_one_mid_trial() -> bool:
        """Once each worker has finished a trial, kill -9 whichever is training a student."""
        if killed:
            return True
        runs = _trial_runs(store, "grid") if store.list_studies() else []
        done_by = {int(r.worker.split(":")[1]) for r in runs if r.status == "completed" and r.worker}
        if done_by != set(pids):
            return False
        for r in runs:
            if r.status == "running" and r.phase == "student" and r.worker:
                pid = int(r.worker.split(":")[1])
                if pid in pids and len(store.metrics_frame([r.id], kind="epoch")) > 0:
                    pids[pid].send_signal(signal.SIGKILL)
                    pids[pid].wait()
                    killed.append(r.id)
                    return True
        return False

    try:
        wait_while_progressing(store, lambda: kill_one_mid_trial() or driver.poll() is not None, "the first trials")
        wait_while_progressing(store, lambda: driver.poll() is not None, "the study finishing")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(60)
    assert driver.returncode == 0, driver.stderr.read()[-3000:]
    assert killed, "no trial was caught mid-run"
    described = describe_study(store, "grid")
    states = [t["state"] for t in described["trials"]]
    assert described["status"] == "finished" and len(states) == 12
    assert {tuple(sorted(t["params"].items())) for t in described["trials"]} == {
        tuple(sorted({"distill.alpha": a, "distill.temperature": t, "train.lr": lr}.items()))
        for a in (0.3, 0.6, 0.9) for t in (2.0, 4.0) for lr in (0.003, 0.00001)}  # the grid, once through
    killed_trial = next(t for t in described["trials"] if t["run_id"] == killed[0])
    assert killed_trial["state"] == "interrupted"
    # the median pruner stops trials at the learning rate too small to learn; a good trial that trails the median
    # of the good ones finished before it can be stopped too, depending on which finish first
    pruned_lrs = [t["params"]["train.lr"] for t in described["trials"] if t["state"] == "pruned"]
    assert pruned_lrs.count(0.00001) >= 1 and pruned_lrs.count(0.00001) > pruned_lrs.count(0.003), pruned_lrs
    assert states.count("complete") >= 6
    runs = _trial_runs(store, "grid")
    assert all(r.attempt == 1 for r in runs)  # each trial executed once, by one worker
    assert len({r.worker.split(":")[1] for r in runs}) == 2  # both worker processes ran trials
    epochs = store.metrics_frame([r.id for r in runs], kind="epoch")
    assert not epochs.duplicated(["run_id", "phase", "epoch", "name"]).any()
    for t in described["trials"]:
        if t["state"] == "complete":
            run = store.get_run(t["run_id"])
            assert t["value"] == pytest.approx(run.summary["student_best_val_acc"] - run.summary["baseline_best_val_acc"])


# ---- Ctrl-C, then --resume ------------------------------------------------------------------------------
def test_ctrl_c_stops_a_study_and_resume_runs_no_finished_trial_again(store, tmp_path):
    config, space = _files(tmp_path, SEARCH, train={**BASE["train"], "epochs": 60})
    tune = _kdcore(store, "tune", config, "--space", space, "--trials", 6, "--name", "s", "--pruner", "none")

    def two_done_one_running() -> bool:
        if not store.list_studies():
            return False
        runs = _trial_runs(store, "s")
        done = [r for r in runs if r.status == "completed"]
        return len(done) >= 2 and any(r.status == "running" and r.phase == "student" for r in runs)

    wait_while_progressing(store, two_done_one_running, "two trials done and a third training")
    before = {r.id: (r.finished_at, r.summary_json) for r in _trial_runs(store, "s") if r.status == "completed"}
    values = {t["run_id"]: t["value"] for t in describe_study(store, "s")["trials"] if t["state"] == "complete"}
    tune.send_signal(signal.SIGINT)
    out, err = tune.communicate(timeout=600)
    assert tune.returncode == 130, err[-2000:]
    assert "kdcore tune --resume 's'" in err
    assert store.get_study("s").status == "stopped"
    stopped = [r for r in _trial_runs(store, "s") if r.status != "completed"]
    assert stopped and all(r.status in ("interrupted", "cancelled") for r in stopped)

    resumed = _run(store, "tune", "--resume", "s", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    described = json.loads(resumed.stdout)
    assert described["status"] == "finished" and [t["state"] for t in described["trials"]] == ["complete"] * 6
    runs = {r.id: r for r in _trial_runs(store, "s")}
    for run_id, (finished_at, summary_json) in before.items():  # finished trials kept as they were, never re-run
        assert runs[run_id].attempt == 1 and runs[run_id].finished_at == finished_at
        assert runs[run_id].summary_json == summary_json
    assert {t["run_id"]: t["value"] for t in described["trials"] if t["run_id"] in values} == values
    assert any(runs[r.id].attempt == 2 for r in stopped if r.status == "interrupted")  # went on, not restarted
    # one teacher and one baseline for the whole study: only distillation keys vary
    trained = [r for r in runs.values() if "teacher_from_run" not in r.summary]
    assert len(trained) == 1 and all("teacher" in read_finished(store.run_dir(r.id)) for r in trained)
    assert sum("baseline_from_run" not in r.summary for r in runs.values()) == 1


def test_a_studys_runs_are_deleted_only_with_the_study(store, tmp_path):
    config, space = _files(tmp_path, SEARCH, train={**BASE["train"], "epochs": 2})
    done = _run(store, "tune", config, "--space", space, "--trials", 2, "--name", "s", "--confirm-seeds", "0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    study = store.get_study("s")
    trial_run = next(iter(store.trial_runs(study.id).values()))
    refused = _run(store, "runs", "delete", trial_run, "--yes")
    assert refused.returncode == 1 and "is trial 0 of study 's'" in refused.stderr
    confirm_run = store.list_runs(group=study.confirm_group)[0].id
    refused = _run(store, "runs", "delete", confirm_run, "--yes")
    assert refused.returncode == 1 and "study 's''s confirmation" in refused.stderr
    folders = [store.run_dir(r.id) for r in store.list_runs()]
    assert all(f.is_dir() for f in folders)
    deleted = _run(store, "studies", "delete", "s", "--yes")
    assert deleted.returncode == 0 and "deleted with 4 run(s)" in deleted.stdout
    assert store.list_studies() == [] and store.list_runs() == [] and not any(f.exists() for f in folders)
    shown = _run(store, "studies", "show", "s")
    assert shown.returncode == 2 and "no study named 's'" in shown.stderr


def test_the_confirmation_answers_in_one_sentence_with_its_interval(store, tmp_path):
    config, space = _files(tmp_path, SEARCH, train={**BASE["train"], "epochs": 5})
    done = _run(store, "tune", config, "--space", space, "--trials", 3, "--name", "s", "--confirm-seeds", "0-2",
                "--pruner", "hyperband", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    described = json.loads(done.stdout)
    assert described["objective"] == {**described["objective"], "name": "val_kd_gain", "split": "validation"}
    assert {"name", "objective", "trials", "best", "confirmation", "answer"} <= set(described)
    assert all({"number", "state", "params", "value", "run_id"} <= set(t) for t in described["trials"])
    confirmation = described["confirmation"]
    assert confirmation["trial"] == described["best"]["number"] and confirmation["seeds"] == "0-2"
    gain = confirmation["aggregate"]["kd_gain"]
    assert set(gain) == {"mean", "std", "n", "ci95"} and gain["n"] == 3
    seeds = sorted(store.get_run(r).config["train"]["seed"] for r in confirmation["run_ids"])
    assert seeds == [0, 1, 2]
    low, high = gain["ci95"]
    points = f"{100 * gain['mean']:+.2f}".replace("-", "−")
    assert f"{points} points over scratch (95% interval" in described["answer"] and "3 fresh seeds" in described["answer"]
    if low <= 0 <= high:
        assert described["answer"].startswith("no setting tried makes distillation pay off")
    shown = _run(store, "studies", "show", "s")
    assert shown.returncode == 0 and described["answer"] in shown.stdout
