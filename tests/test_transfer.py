"""Transfer learning: a teacher from another dataset fine-tuned here, a new classifier for other classes,
the last stage alone, and a student that starts from a checkpoint. Real training on MNIST, Fashion-MNIST, digits.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcore.checks import check_runnable
from kdcore.cli import main
from kdcore.configure import build_config
from kdcore.data import load_dataset
from kdcore.engine.checkpoint import CheckpointError, load_pretrained, save_checkpoint
from kdcore.engine.events import no_callback
from kdcore.engine.run import execute_run
from kdcore.engine.trainer import fit
from kdcore.experiments import expand
from kdcore.jobs.worker import execute_job
from kdcore.models import create_model
from kdcore.store import Store

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
DIGITS = {"dataset": {"name": "digits", "val_fraction": 0.15},
          "student": {"arch": "mlp_tiny"},
          "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "seed": 0, "device": "cpu"}, "baseline": False}


def kdcore(*args, db):
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def digits_checkpoint(path: Path, arch: str, classes: int = 10, channels: int = 1, epochs: int = 1, **options) -> Path:
    """A model trained on digits (relabelled modulo `classes`), saved as kdcore saves a phase's weights."""
    data = load_dataset(build_config(DIGITS).dataset)
    if classes != 10:
        data.train.y, data.val.y = data.train.y % classes, data.val.y % classes
    torch.manual_seed(7)
    model = create_model(arch, classes, channels, 8, **options)
    if channels == 1 and epochs:
        fit(model, data, phase="teacher", epochs=epochs, train_cfg=build_config(DIGITS).train, device=CPU,
            callback=no_callback)
    save_checkpoint(path, model, arch=arch, num_classes=classes, in_channels=channels, image_size=8, options=options)
    return path


def test_an_mnist_teacher_fine_tuned_on_fashion_mnist_from_the_cli_beats_its_accuracy_before(tmp_path, shared_data):
    db = f"sqlite:///{tmp_path}/kd.db"
    tiny = ["--set", f"dataset.root={shared_data}", "--set", "teacher.arch=tiny_cnn", "--set", "student.arch=mlp_tiny",
            "--set", "train.epochs=1", "--set", "train.batch_size=256", "--set", "dataset.student_fraction=0.02",
            "--set", "baseline=false"]
    mnist = kdcore("train", "examples/mnist_teacher.yaml", "--set", "teacher.epochs=1", *tiny, db=db)
    assert mnist.returncode == 0, mnist.stderr[-3000:]
    fashion = kdcore("train", "examples/transfer_mnist_to_fashion.yaml", "--set", "teacher.run_id=1",
                     "--set", "teacher.finetune_epochs=1", "--json", *tiny, db=db)
    assert fashion.returncode == 0, fashion.stderr[-3000:]
    run = json.loads(fashion.stdout)
    s = run["summary"]
    assert run["status"] == "completed" and run["config"]["dataset"]["name"] == "fashion_mnist"
    assert s["teacher_finetune_epochs"] == 1 and s["teacher_finetuned_from"] == "run 1" and not s["teacher_new_head"]
    # MNIST's weights as they are score little on clothes; one epoch of fine-tuning makes a real teacher of them
    assert s["teacher_pretrained_test_acc"] < s["teacher_test_acc"], s
    assert s["teacher_test_acc"] > 0.6
    assert s["teachers"] == [{"phase": "teacher", "arch": "tiny_cnn", "source": "run", "test_acc": s["teacher_test_acc"],
                              "params": s["teacher_params"], "pretrained_test_acc": s["teacher_pretrained_test_acc"],
                              "finetune_epochs": 1}]
    store = Store(db)
    fine_tuning = store.metrics_frame([2], kind="epoch").query("phase == 'teacher' and name == 'val_acc'")
    assert list(fine_tuning["epoch"]) == [1]
    shown = kdcore("runs", "show", "2", db=db)
    assert "fine-tuned 1 epoch(s) from run 1" in shown.stdout and "before" in shown.stdout, shown.stdout


def test_a_checkpoint_for_other_classes_gets_a_new_head_when_fine_tuned_and_is_refused_without(tmp_path, capsys):
    five = digits_checkpoint(tmp_path / "five.pt", "small_cnn", classes=5)
    teacher = {"arch": "small_cnn", "source": "checkpoint", "checkpoint": str(five)}
    db = f"sqlite:///{tmp_path}/store/kd.db"
    code = main(["--db", db, "train", "examples/digits.yaml", "--set", f"teacher={json.dumps(teacher)}"])
    err = capsys.readouterr().err
    assert code == 2 and "teacher.checkpoint: five.pt was trained on 1×8×8 images of 5 classes" in err, err
    assert "classes 5 vs 10" in err and "set teacher.finetune_epochs to fine-tune it with a new classification head" in err
    assert not (tmp_path / "store").exists()
    with pytest.raises(CheckpointError, match="five.pt was trained for 5 classes, but this dataset has 10"):
        execute_run(build_config({**DIGITS, "teacher": teacher}), tmp_path / "unchecked", device=CPU)

    # loaded for fine-tuning: every weight but the classifier's comes from the file
    loaded = load_pretrained(five, arch="small_cnn", num_classes=10, in_channels=1, image_size=8, new_head=True, seed=0)
    assert loaded.new_head
    own, theirs = loaded.model.state_dict(), weights(five)
    assert [k for k in own if not torch.equal(own[k], theirs[k]) if own[k].shape == theirs[k].shape] == []
    assert [k for k in own if own[k].shape != theirs[k].shape] == ["classifier.weight", "classifier.bias"]

    config = build_config({**DIGITS, "teacher": {**teacher, "finetune_epochs": 3}})
    assert check_runnable(config, store=db) == []
    s = execute_run(config, tmp_path / "run", device=CPU)
    assert s["teacher_new_head"] and s["teacher_finetune_epochs"] == 3 and s["teacher_epochs"] == 3
    assert s["teacher_pretrained_test_acc"] < 0.35  # a new classifier: about chance (0.1)
    assert s["teacher_test_acc"] > 0.8
    assert weights(tmp_path / "run" / "teacher.pt")["classifier.weight"].shape[0] == 10


@pytest.mark.parametrize("arch, options, trained", [
    ("small_cnn", {"width": 8}, ["features.4.", "features.5.", "classifier."]),  # conv, BN of the last stage; head
    ("mlp", {"hidden": [32, 16]}, ["3.", "5."]),  # the last hidden Linear and the head
])
def test_fine_tuning_the_last_stage_only_leaves_every_other_weight_as_loaded(tmp_path, arch, options, trained):
    source = digits_checkpoint(tmp_path / "source.pt", arch, **options)
    config = build_config({**DIGITS, "teacher": {"arch": arch, "source": "checkpoint", "checkpoint": str(source),
                                                 "finetune_epochs": 2, "finetune_last_stage_only": True}})
    assert check_runnable(config) == []
    s = execute_run(config, tmp_path / "run", device=CPU)
    before, after = weights(source), weights(tmp_path / "run" / "teacher.pt")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.startswith(tuple(trained)) for k in changed), changed  # BN statistics included
    assert {k.split(".")[-1] for k in changed} >= {"weight", "bias"}
    assert s["teacher_epochs"] == 2


def test_a_student_and_its_baseline_both_start_from_the_students_checkpoint(tmp_path, capsys):
    start = digits_checkpoint(tmp_path / "student_start.pt", "mlp_tiny", classes=5)
    # half the tensors frozen (the hidden layer) show the start; alpha 0 makes the student a second baseline
    config = build_config({**DIGITS, "baseline": True, "teacher": {"arch": "mlp_tiny", "epochs": 1},
                           "student": {"arch": "mlp_tiny", "checkpoint": str(start), "freeze_fraction": 0.5},
                           "distill": {"alpha": 0.0}, "train": {**DIGITS["train"], "epochs": 3}})
    assert check_runnable(config) == []
    s = execute_run(config, tmp_path / "run", device=CPU)
    assert s["student_init"] == "student_start.pt" and s["student_init_new_head"]
    loaded = weights(start)
    for phase in ("student", "baseline"):
        trained = weights(tmp_path / "run" / f"{phase}.pt")
        assert torch.equal(trained["1.weight"], loaded["1.weight"]) and torch.equal(trained["1.bias"], loaded["1.bias"])
        assert trained["3.weight"].shape == (10, 64) and not torch.equal(trained["3.weight"][:5], loaded["3.weight"])
    student, baseline = weights(tmp_path / "run" / "student.pt"), weights(tmp_path / "run" / "baseline.pt")
    assert all(torch.equal(student[k], baseline[k]) for k in student)  # the same start, head included

    rgb = digits_checkpoint(tmp_path / "rgb.pt", "mlp_tiny", channels=3)
    problems = dict(check_runnable(config.model_copy(update={"student": config.student.model_copy(
        update={"checkpoint": str(rgb)})})))
    assert list(problems) == ["student.checkpoint"] and "channels 3 vs 1" in problems["student.checkpoint"], problems


def test_a_seed_group_fine_tunes_its_teacher_once(tmp_path):
    source = digits_checkpoint(tmp_path / "source.pt", "small_cnn", width=8)
    store = Store(f"sqlite:///{tmp_path}/kd.db")
    config = build_config({**DIGITS, "teacher": {"arch": "small_cnn", "source": "checkpoint",
                                                 "checkpoint": str(source), "finetune_epochs": 1}})
    ids = [store.create_run(cfg) for cfg in expand(config, seeds=[0, 1], group="transfer")]
    for run_id in ids:
        store.claim("test", run_id=run_id)
        assert execute_job(store, run_id, worker="test") == "completed", store.get_run(run_id).error
    fine_tuned = set(store.metrics_frame(ids, kind="epoch").query("phase == 'teacher'")["run_id"])
    assert fine_tuned == {ids[0]}
    first, second = (store.get_run(i).summary for i in ids)
    assert second["teacher_from_run"] == ids[0] and second["teacher_test_acc"] == first["teacher_test_acc"]


@pytest.mark.parametrize("teacher, key, words", [
    ({"finetune_epochs": 2}, "teacher.finetune_epochs", "only a teacher loaded from a run or a checkpoint"),
    ({"finetune_last_stage_only": True}, "teacher.finetune_last_stage_only", "only a teacher loaded from a run"),
    ({"source": "checkpoint", "finetune_last_stage_only": True}, "teacher.finetune_last_stage_only",
     "set teacher.finetune_epochs too"),
])
def test_fine_tuning_settings_that_would_not_run_are_refused_naming_the_key(tmp_path, teacher, key, words):
    path = digits_checkpoint(tmp_path / "t.pt", "small_cnn", epochs=0) if teacher.get("source") else None
    config = build_config({**DIGITS, "teacher": {"arch": "small_cnn", **teacher,
                                                 **({"checkpoint": str(path)} if path else {})}})
    problems = dict(check_runnable(config))
    assert list(problems) == [key] and words in problems[key], problems
