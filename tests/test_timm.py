"""timm architectures (`timm/<name>`): runs, feature stages, profiles, pretrained files and refusals."""
from pathlib import Path

import pytest
import torch

from kdcore.checks import check_runnable
from kdcore.config import ConfigError
from kdcore.configure import build_config
from kdcore.engine.run import execute_run
from kdcore.models import build_problem, create_model, model_profile
from kdcore.models.stages import feature_stages
from kdcore.models.timm_models import PretrainedMismatch

CPU = torch.device("cpu")
TEACHER, STUDENT = "timm/test_resnet", "timm/test_efficientnet"
RUN = {"dataset": {"name": "digits", "val_fraction": 0.15},
       "teacher": {"arch": TEACHER, "epochs": 3},
       "student": {"arch": STUDENT},
       "baseline": False,
       "train": {"epochs": 1, "batch_size": 256, "lr": 0.01, "seed": 0, "device": "cpu"}}


def test_a_timm_teacher_distils_into_a_timm_student_on_digits(tmp_path):
    summary = execute_run(build_config(RUN), tmp_path / "run", device=CPU)
    for role, arch in (("teacher", TEACHER), ("student", STUDENT)):
        profile = model_profile(arch, 10, 1, 8)
        assert summary[f"{role}_params"] == profile.params > 0
        assert summary[f"{role}_flops"] == profile.flops == 2 * profile.macs > 0
        assert 0.0 <= summary[f"{role}_test_acc"] <= 1.0
    assert summary["teacher_test_acc"] > 0.3  # trained on 8 px digits, not chance (0.1)


def test_a_fitnets_run_reads_a_timm_teachers_stages_from_its_feature_info(tmp_path):
    teacher = create_model(TEACHER, 10, 1, 8)
    assert feature_stages(teacher, torch.zeros(2, 1, 8, 8)) == [i["module"] for i in teacher.feature_info]
    config = build_config({**RUN, "teacher": {"arch": TEACHER, "epochs": 1}, "student": {"arch": "small_cnn"},
                           "distill": {"method": "fitnets", "options": {"teacher_layer": "stage:2"}}})
    summary = execute_run(config, tmp_path / "run", device=CPU)
    assert 0.0 <= summary["student_test_acc"] <= 1.0


def test_an_unknown_timm_name_is_refused_with_the_closest_names():
    with pytest.raises(ConfigError) as err:
        build_config({**RUN, "teacher": {"arch": "timm/resnet1"}})
    assert "unknown timm model 'resnet1'" in str(err.value) and "resnet18" in str(err.value)


def test_a_pretrained_file_that_fits_loads_and_one_that_does_not_names_its_keys(tmp_path):
    torch.manual_seed(0)
    source = create_model(TEACHER, 10, 1, 8)
    fits = tmp_path / "fits.pt"
    torch.save(source.state_dict(), fits)
    loaded = create_model(TEACHER, 10, 1, 8, pretrained=str(fits))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())

    other = tmp_path / "other.pt"
    torch.save(create_model(STUDENT, 10, 1, 8).state_dict(), other)
    with pytest.raises(PretrainedMismatch) as err:
        create_model(TEACHER, 10, 1, 8, pretrained=str(other))
    assert "missing keys: " in str(err.value) and "conv1.0.weight" in str(err.value)
    assert "unexpected keys: blocks.0.0." in str(err.value)

    wrong_head = tmp_path / "head.pt"
    torch.save(create_model(TEACHER, 7, 1, 8).state_dict(), wrong_head)
    with pytest.raises(PretrainedMismatch, match="keys of another shape: fc.bias, fc.weight"):
        create_model(TEACHER, 10, 1, 8, pretrained=str(wrong_head))


def test_a_pretrained_file_that_does_not_fit_is_refused_before_any_work(tmp_path):
    other = tmp_path / "other.pt"
    torch.save(create_model(STUDENT, 10, 1, 8).state_dict(), other)
    config = build_config({**RUN, "teacher": {"arch": TEACHER, "epochs": 1, "pretrained": str(other)},
                           "student": {"arch": STUDENT, "pretrained": str(other)}})
    problems = dict(check_runnable(config, store=f"sqlite:///{tmp_path}/none.db"))
    assert list(problems) == ["teacher.pretrained"], problems
    assert "does not fit timm/test_resnet: missing keys: " in problems["teacher.pretrained"]
    with pytest.raises(PretrainedMismatch, match="does not fit timm/test_resnet: missing keys"):
        execute_run(config, tmp_path / "run", device=CPU)  # and the run itself, should it be started unchecked


def test_pretrained_is_refused_for_zoo_models_and_teachers_not_trained_here():
    with pytest.raises(ConfigError, match="timm/<name> models only"):
        build_config({**RUN, "student": {"arch": "small_cnn", "pretrained": "x.pt"}})
    with pytest.raises(ConfigError, match="teacher.source train"):
        build_config({**RUN, "teacher": {"arch": TEACHER, "source": "checkpoint", "checkpoint": "t.pt",
                                         "pretrained": "x.pt"}})


def test_an_option_timm_does_not_take_is_refused_in_words(tmp_path):
    with pytest.raises(TypeError) as err:
        create_model(TEACHER, 10, 1, 8, no_such_option=1)
    assert build_problem(TEACHER, err.value) == "timm/test_resnet takes no option 'no_such_option': remove it from the options"
    config = build_config({**RUN, "student": {"arch": STUDENT, "options": {"no_such_option": 1}}})
    problems = dict(check_runnable(config, store=f"sqlite:///{tmp_path}/none.db"))
    assert problems == {"student.options": "timm/test_efficientnet takes no option 'no_such_option': remove it "
                                           "from the options"}, problems


def test_a_timm_model_too_big_for_the_images_is_refused_with_the_smallest_size(tmp_path):
    config = build_config({**RUN, "student": {"arch": "timm/test_vit"}})
    problems = dict(check_runnable(config, store=f"sqlite:///{tmp_path}/none.db"))
    assert "needs images of at least 16 px" in str(problems), problems
    # a ViT is built for the run's image size: with a smaller patch it takes 8 px digits
    out = create_model("timm/test_vit", 10, 1, 8, patch_size=4)(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10)


def test_the_model_picker_offers_timm_names_after_the_zoos():
    from kdcore.models import MODELS
    from tests.helpers import new_experiment_with

    at = new_experiment_with(**{"f.dataset.name": "digits", "f.student.arch": STUDENT, "f.student.options": ""})
    picker = at.selectbox(key="f.student.arch")
    assert picker.value == STUDENT
    zoo = len(MODELS.names())
    assert all(not label.startswith("timm/") for label in picker.options[:zoo])
    assert f"{TEACHER} · timm test_resnet, small-input stem up to 64 px" in picker.options[zoo:]
    assert not [e.value for e in at.error]
