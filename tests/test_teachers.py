"""Several teachers distilled as one: phases teacher, teacher2, …, their ensemble, resume and reuse, on real digits."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcore.checks import check_runnable
from kdcore.cli import main
from kdcore.config import ConfigError
from kdcore.configure import build_config
from kdcore.engine.checkpoint import save_checkpoint
from kdcore.engine.events import Event
from kdcore.engine.run import execute_run
from kdcore.experiments import expand
from kdcore.jobs import run_here
from kdcore.jobs.worker import execute_job
from kdcore.models import create_model
from kdcore.store import Store

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TWO = {"dataset": {"name": "digits", "val_fraction": 0.15},
       "teachers": [{"arch": "small_cnn", "epochs": 2}, {"arch": "mlp", "options": {"hidden": [64]}, "epochs": 3}],
       "student": {"arch": "mlp_tiny"},
       "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0, "device": "cpu"}}


def kdcore(*args, db):
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_two_teachers_from_the_cli_give_each_teacher_the_ensemble_and_the_student(tmp_path):
    db = f"sqlite:///{tmp_path}/kd.db"
    small = ["--set", "teachers=[{arch: small_cnn, epochs: 3}, {arch: mlp, options: {hidden: [64]}, epochs: 5}]",
             "--set", "train.epochs=3", "--set", "distill.teacher_weights=[3, 1]"]
    result = kdcore("train", "examples/two_teachers.yaml", *small, db=db)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("teacher  small_cnn", "teacher2 mlp", "ensemble 2 teachers together", "weights 0.75/0.25", "than its teachers together"):
        assert line in result.stdout, result.stdout

    store = Store(db)
    run = store.list_runs()[0]
    s = run.summary
    assert run.status == "completed" and run.teacher_arch == "small_cnn + mlp"
    for key in ("teacher_test_acc", "teacher2_test_acc", "ensemble_test_acc", "teacher2_params", "teacher2_size_mb",
                "teacher2_flops", "teacher2_best_val_acc", "teacher2_epochs"):
        assert key in s, key
    assert s["teacher_test_acc"] > 0.5 and s["teacher2_test_acc"] > 0.5  # trained, not chance (0.1)
    assert s["teacher2_epochs"] == 5 and s["teacher_weights"] == [0.75, 0.25]
    assert [(t["phase"], t["arch"], t["source"]) for t in s["teachers"]] == [("teacher", "small_cnn", "train"),
                                                                           ("teacher2", "mlp", "train")]
    assert all(t["pretrained_test_acc"] is None and t["finetune_epochs"] == 0 for t in s["teachers"])
    assert s["teachers"][1]["test_acc"] == s["teacher2_test_acc"] and s["teachers"][1]["params"] == s["teacher2_params"]
    assert s["teacher_params"] == s["teachers"][0]["params"]  # the column stays the first teacher's
    assert s["compression"] == pytest.approx((s["teacher_params"] + s["teacher2_params"]) / s["student_params"])
    assert s["flops_ratio"] == pytest.approx((s["teacher_flops"] + s["teacher2_flops"]) / s["student_flops"])

    artefacts = store.artefacts(run.id)
    assert artefacts["teacher2_weights"].is_file() and artefacts["teacher_weights"].is_file()
    logits = torch.load(artefacts["test_logits"], weights_only=True)
    assert set(logits) == {"labels", "teacher", "teacher2", "ensemble", "student", "baseline"}
    # the ensemble recomputed here from the stored logits: the weighted mean of softmax(z / T)
    T = run.temperature
    mean = 0.75 * torch.softmax(logits["teacher"] / T, 1) + 0.25 * torch.softmax(logits["teacher2"] / T, 1)
    labels = logits["labels"]
    assert s["ensemble_test_acc"] == pytest.approx((mean.argmax(1) == labels).float().mean().item())
    assert torch.allclose(torch.softmax(logits["ensemble"] / T, 1), mean, atol=1e-5)
    agreement = (logits["student"].argmax(1) == mean.argmax(1)).float().mean().item()
    assert s["test_agreement"] == pytest.approx(agreement)  # against the ensemble the student learned from

    shown = kdcore("runs", "show", str(run.id), db=db)
    assert shown.returncode == 0 and "teacher2 mlp" in shown.stdout and "ensemble" in shown.stdout


@pytest.mark.parametrize("data, named", [
    ({**TWO, "teacher": {"arch": "resnet8"}}, ["teacher", "teachers"]),
    ({**TWO, "distill": {"teacher_weights": [1, 1, 1]}}, ["distill.teacher_weights", "3 entries for 2 teacher"]),
])
def test_a_teacher_beside_teachers_or_weights_of_the_wrong_length_are_refused(tmp_path, capsys, data, named):
    with pytest.raises(ConfigError) as err:
        build_config(data)
    assert all(n in str(err.value) for n in named), str(err.value)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(data))
    assert main(["--db", f"sqlite:///{tmp_path}/kd.db", "train", str(config)]) == 2
    stderr = capsys.readouterr().err
    assert "invalid config" in stderr and all(n in stderr for n in named), stderr
    assert not (tmp_path / "kd.db").exists()


def test_a_two_teacher_run_stopped_after_its_first_teacher_does_not_train_it_again(tmp_path):
    config = build_config(TWO)
    stop = {"now": False}

    def stop_at_teacher2(event: Event) -> None:
        if event.kind == "phase" and event.phase == "teacher2":
            stop["now"] = True

    first = execute_run(config, tmp_path, device=CPU, callback=stop_at_teacher2, should_stop=lambda: stop["now"])
    assert first["cancelled"] and "teacher_test_acc" in first and "teacher2_test_acc" not in first
    trained_once = torch.load(tmp_path / "teacher.pt", weights_only=True)["state_dict"]

    events: list[Event] = []
    summary = execute_run(config, tmp_path, device=CPU, callback=events.append)
    assert not summary["cancelled"]
    trained = {e.phase for e in events if e.kind == "epoch"}
    assert trained == {"teacher2", "student", "baseline"}
    loaded = [e for e in events if e.kind == "phase" and e.phase == "teacher"]
    assert loaded[0].info == {"loaded": "this run's earlier attempt"}
    plan = next(e for e in events if e.kind == "plan").info
    assert plan["phases"] == ["teacher", "teacher2", "student", "baseline"] and plan["steps"]["teacher"] == 0
    assert plan["steps"]["teacher2"] > 0
    assert summary["teacher_test_acc"] == first["teacher_test_acc"]
    assert summary["teacher_epochs"] == 2 and summary["teacher2_epochs"] == 3  # the first kept from its record
    again = torch.load(tmp_path / "teacher.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], trained_once[k]) for k in trained_once)


def test_a_seed_group_of_two_teacher_runs_trains_each_teacher_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/kd.db")
    configs = expand(build_config({**TWO, "baseline": False}), seeds=[0, 1], group="pair")
    assert all(t.seed == 0 for cfg in configs for t in cfg.all_teachers)
    assert all(cfg.teacher == cfg.teachers[0] for cfg in configs)  # the stored config reads back
    ids = [store.create_run(cfg) for cfg in configs]
    for run_id in ids:
        store.claim("test", run_id=run_id)
        assert execute_job(store, run_id, worker="test") == "completed"
    trained = store.metrics_frame(ids, kind="epoch").groupby("phase")["run_id"].unique().map(sorted).to_dict()
    assert trained["teacher"] == [ids[0]] and trained["teacher2"] == [ids[0]] and trained["student"] == ids
    second = store.get_run(ids[1]).summary
    assert second["teacher_from_run"] == ids[0] == second["teacher2_from_run"]
    assert second["teacher2_test_acc"] == store.get_run(ids[0]).summary["teacher2_test_acc"]


def test_every_teacher_is_checked_before_any_work(tmp_path):
    wrong = create_model("small_cnn", 10, 1, 28)
    path = tmp_path / "mnist_teacher.pt"
    save_checkpoint(path, wrong, arch="small_cnn", num_classes=10, in_channels=1, image_size=28)
    config = build_config({**TWO, "teachers": [TWO["teachers"][0], {"arch": "small_cnn", "source": "checkpoint",
                                                                    "checkpoint": str(path)}]})
    problems = dict(check_runnable(config, store=f"sqlite:///{tmp_path}/none.db"))
    assert list(problems) == ["teachers.1.checkpoint"], problems
    assert "image size 28 vs 8" in problems["teachers.1.checkpoint"]
    huge = build_config({**TWO, "teachers": [TWO["teachers"][0], {"arch": "mlp", "options": {"hidden": [12000, 12000]}}]})
    problems = dict(check_runnable(huge, store=f"sqlite:///{tmp_path}/none.db"))
    assert list(problems) == ["teachers.1.options"] and "million parameters" in problems["teachers.1.options"]


def test_a_stored_runs_first_teacher_serves_as_a_later_runs_second(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/kd.db")
    source, status = run_here(store, build_config({**TWO, "baseline": False}))
    assert status == "completed"
    config = build_config({**TWO, "baseline": False, "teachers": [
        TWO["teachers"][1], {"arch": "small_cnn", "source": "run", "run_id": source}]})
    run_id, status = run_here(store, config)
    assert status == "completed", store.get_run(run_id).error
    s = store.get_run(run_id).summary
    assert s["teacher2_test_acc"] == store.get_run(source).summary["teacher_test_acc"]
    assert s["teacher2_from_run"] == source and s["teacher2_best_val_acc"] == store.get_run(source).summary["teacher_best_val_acc"]
    assert "teacher2" not in set(store.metrics_frame([run_id])["phase"])  # loaded, not trained
