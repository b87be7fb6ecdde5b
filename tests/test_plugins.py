"""Models from an installed package (entry point group `kdcore.models`): a tiny package is pip-installed for real."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdcore.models import MODELS

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "kdtiny"
version = "0.1"

[project.entry-points."kdcore.models"]
tiny_plug = "kdtiny:TinyPlug"
broken_plug = "kdtiny_not_there:build"
resnet20 = "kdtiny:TinyPlug"
"""

MODULE = '''
from torch import nn


class TinyPlug(nn.Sequential):
    """A two-layer perceptron from the kdtiny package"""

    def __init__(self, num_classes, in_channels, image_size, hidden=32):
        super().__init__(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed with pip into a folder of its own, which the tests put on the path."""
    base = tmp_path_factory.mktemp("plugin")
    (base / "src").mkdir()
    (base / "src" / "pyproject.toml").write_text(PYPROJECT)
    (base / "src" / "kdtiny.py").write_text(textwrap.dedent(MODULE))
    target = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(base / "src")], check=True, capture_output=True, timeout=300)
    return target


def kdcore(*args, db, path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


@pytest.fixture
def on_path(installed):
    sys.path.insert(0, str(installed))
    MODELS.reload_plugins()
    yield installed
    sys.path.remove(str(installed))
    MODELS.reload_plugins()


def test_a_run_distils_into_a_model_from_an_installed_package(installed, tmp_path):
    db = f"sqlite:///{tmp_path}/kd.db"
    config = tmp_path / "plug.yaml"
    config.write_text(json.dumps({
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "teacher": {"arch": "tiny_plug", "epochs": 3, "options": {"hidden": 64}},
        "student": {"arch": "tiny_plug", "options": {"hidden": 8}},
        "train": {"epochs": 2, "batch_size": 128, "seed": 0, "device": "cpu"}}))
    result = kdcore("train", str(config), db=db, path=installed)
    assert result.returncode == 0, result.stderr
    shown = json.loads(kdcore("runs", "show", "1", "--json", db=db, path=installed).stdout)
    summary = shown["summary"]
    assert shown["status"] == "completed"
    assert summary["teacher_params"] == 64 * 64 + 64 + 64 * 10 + 10  # 8x8 digits, its hidden option honoured
    assert summary["student_params"] == 64 * 8 + 8 + 8 * 10 + 10
    assert summary["teacher_test_acc"] > 0.5  # it trained: chance is 0.1


def test_kdcore_models_lists_the_package_s_model_and_its_broken_entries(installed, tmp_path):
    listed = kdcore("models", db=f"sqlite:///{tmp_path}/kd.db", path=installed)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "A two-layer perceptron from the kdtiny package" in lines["tiny_plug"]
    assert "broken" in lines["broken_plug"] and "ModuleNotFoundError: No module named 'kdtiny_not_there'" in lines[
        "broken_plug"]
    resnet20 = [line for line in listed.stdout.splitlines() if line.startswith("resnet20 ")]
    assert "CIFAR-style ResNet, 20 layers" in resnet20[0]  # the zoo's keeps its name
    assert "broken" in resnet20[1] and "its name is already taken by the zoo" in resnet20[1]


def test_a_broken_entry_point_is_refused_by_name_and_a_config_never_imports_code(installed, tmp_path):
    db = f"sqlite:///{tmp_path}/kd.db"
    for arch, words in (("broken_plug", "from an installed package is broken: kdtiny_not_there:build failed to import"),
                        ("os:system", "unknown architecture 'os:system'")):
        result = kdcore("train", "examples/digits.yaml", "--set", f"student.arch={arch}", db=db, path=installed)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr
    assert not (tmp_path / "kd.db").exists()  # refused before a store was made


def test_the_picker_offers_the_package_s_model_and_names_the_broken_one(on_path):
    from tests.helpers import new_experiment_with

    at = new_experiment_with(**{"f.dataset.name": "digits", "f.student.arch": "tiny_plug", "f.student.options": ""})
    picker = at.selectbox(key="f.student.arch")
    assert "tiny_plug · A two-layer perceptron from the kdtiny package" in picker.options
    assert picker.value == "tiny_plug"
    warned = " ".join(w.value for w in at.warning)
    assert "broken_plug" in warned and "failed to import" in warned
    assert not [e.value for e in at.error]
