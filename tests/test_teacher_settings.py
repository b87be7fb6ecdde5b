"""A teacher's own training settings (teacher.augment, teacher.train): the teacher alone gets them."""
import pytest
import torch

from kdcore.config import ConfigError
from kdcore.configure import build_config
from kdcore.engine.run import baseline_key, execute_run, teacher_key

BASE = {"dataset": {"name": "digits", "val_fraction": 0.15}, "teacher": {"arch": "tiny_cnn", "epochs": 2},
        "student": {"arch": "mlp_tiny"}, "train": {"epochs": 2, "batch_size": 128, "lr": 0.003, "seed": 0}}


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_teachers_own_jitter_and_lr_change_the_teacher_and_leave_the_baseline_exactly_as_it_was(tmp_path):
    plain = build_config(BASE)
    own = build_config({**BASE, "teacher": {**BASE["teacher"], "augment": {"crop_padding": 2},
                                            "train": {"lr": 0.01}}})
    assert own.teacher_train().lr == 0.01 and own.train.lr == 0.003 and own.dataset.augment.crop_padding == 0
    plain_summary = execute_run(plain, tmp_path / "plain", device=torch.device("cpu"))
    own_summary = execute_run(own, tmp_path / "own", device=torch.device("cpu"))
    assert own_summary["teacher_augment"]["crop_padding"] == 2 and own_summary["teacher_train"] == {"lr": 0.01}
    assert "teacher_augment" not in plain_summary and "teacher_train" not in plain_summary
    assert own_summary["teacher_key"] != plain_summary["teacher_key"]  # another teacher: never shared as the same
    assert own_summary["baseline_key"] == plain_summary["baseline_key"]
    teacher_a, teacher_b = _weights(tmp_path / "plain" / "teacher.pt"), _weights(tmp_path / "own" / "teacher.pt")
    assert any(not torch.equal(teacher_a[k], teacher_b[k]) for k in teacher_a)
    base_a, base_b = _weights(tmp_path / "plain" / "baseline.pt"), _weights(tmp_path / "own" / "baseline.pt")
    assert all(torch.equal(base_a[k], base_b[k]) for k in base_a)  # no jitter, no other lr for the baseline


def test_keys_of_configs_without_own_settings_are_those_stored_before_they_existed():
    # computed on main at 7d1e1f9, before teachers had settings of their own: stored runs still match
    config = build_config({"dataset": {"name": "digits", "augment": {"crop_padding": 1}},
                           "teacher": {"arch": "tiny_cnn", "epochs": 2}, "student": {"arch": "mlp_tiny"},
                           "train": {"epochs": 2, "lr": 0.003}})
    assert teacher_key(config) == "ca3889f83ec9bd6f" and baseline_key(config) == "6f9b494a3f41bf53"
    compiled = config.model_copy(update={"train": config.train.model_copy(update={"compile": True})})
    assert teacher_key(compiled) != teacher_key(config) and baseline_key(compiled) != baseline_key(config)


@pytest.mark.parametrize("settings, message", [
    ({"epochs": 3}, "teacher.train: epochs: not a setting a teacher trains with on its own"),
    ({"lr": -1}, "teacher.train: lr: Input should be greater than 0"),
    ({"optimizer": "rmsprop"}, "teacher.train: optimizer: Input should be 'sgd', 'adam' or 'adamw'"),
])
def test_a_teachers_bad_own_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ConfigError) as refused:
        build_config({**BASE, "teacher": {**BASE["teacher"], "train": settings}})
    assert message in str(refused.value)
