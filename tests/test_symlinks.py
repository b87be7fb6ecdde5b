"""The data-root rule follows links: a class folder or image inside a data root that resolves outside every data
root is refused, naming it, when a run is checked and when its images are read. Real symlinks in tmp folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdcore.checks import check_runnable
from kdcore.config import DatasetConfig
from kdcore.configure import build_config
from kdcore.data import DatasetError, load_dataset
from kdcore.store import Store
from tests.helpers import STALL_S

ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    return folder


def _config(root: Path) -> dict:
    return {"dataset": {"name": "imagefolder", "root": str(root), "image_size": 8, "val_fraction": 0.2},
            "teacher": {"arch": "mlp_tiny", "epochs": 1}, "student": {"arch": "mlp_tiny"},
            "train": {"epochs": 1, "batch_size": 16}}


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A data root holding pets/ with a real cats/ folder; `outside` is a folder no data root covers."""
    monkeypatch.setenv("KDCORE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("KDCORE_DB_URL", f"sqlite:///{tmp_path}/store/kd.db")
    _images(tmp_path / "data" / "pets" / "cats", 10, 0)
    (tmp_path / "outside").mkdir()
    return tmp_path / "data" / "pets", tmp_path / "outside"


def _refusals(root: Path) -> list:
    return check_runnable(build_config(_config(root)))


def test_a_class_folder_linking_outside_the_data_roots_is_refused_when_checked_and_read(data):
    pets, outside = data
    (pets / "dogs").symlink_to(_images(outside / "dogs", 10, 1))
    (key, message), = _refusals(pets)
    assert key == "dataset.root" and "\n" not in message
    assert f"class folder {pets / 'dogs'} is a link to {outside / 'dogs'}, outside the data roots" in message
    with pytest.raises(DatasetError, match="class folder .*dogs is a link to .*outside/dogs, outside the data roots"):
        load_dataset(DatasetConfig(**_config(pets)["dataset"]))


def test_an_image_linking_outside_the_data_roots_is_refused_when_checked_and_read(data):
    pets, outside = data
    _images(pets / "dogs", 10, 1)
    Image.new("L", (8, 8)).save(outside / "secret.png")
    (pets / "dogs" / "extra.png").symlink_to(outside / "secret.png")
    (key, message), = _refusals(pets)
    assert key == "dataset.root" and "\n" not in message
    assert f"image {pets / 'dogs' / 'extra.png'} is a link to {outside / 'secret.png'}" in message
    with pytest.raises(DatasetError, match=r"image .*extra\.png is a link to .*secret\.png, outside the data roots"):
        load_dataset(DatasetConfig(**_config(pets)["dataset"]))


def test_links_within_the_data_roots_are_read(data, tmp_path, monkeypatch):
    pets, _ = data
    second = tmp_path / "more"
    monkeypatch.setenv("KDCORE_DATA_ROOT", f"{tmp_path / 'data'}{os.pathsep}{second}")
    (pets / "dogs").symlink_to(_images(second / "dogs", 10, 1))  # another data root
    (pets / "cats" / "again.png").symlink_to(pets / "cats" / "0.png")  # the same folder
    assert _refusals(pets) == []
    loaded = load_dataset(DatasetConfig(**_config(pets)["dataset"]))
    assert len(loaded.train) + len(loaded.val) + len(loaded.test) == 21


def test_a_link_made_after_the_run_was_queued_fails_the_run_with_one_line_naming_it(data, tmp_path):
    pets, outside = data
    _images(pets / "dogs", 10, 1)
    store = Store()
    assert _refusals(pets) == []
    run_id = store.create_run(build_config(_config(pets)))  # queued while the folder was fine
    (pets / "birds").symlink_to(_images(outside / "birds", 10, 2))
    worker = subprocess.run([sys.executable, "-m", "kdcore", "worker", "--exit-when-idle", "--no-studies"], cwd=ROOT,
                            env=dict(os.environ, KDCORE_CPU_THREADS="1"), capture_output=True, text=True,
                            timeout=STALL_S)
    assert worker.returncode == 0, worker.stderr[-2000:]
    run = store.get_run(run_id)
    headline = run.error.split("\n\n")[0]
    assert run.status == "failed" and "\n" not in headline
    assert headline.startswith(f"imagefolder: class folder {pets / 'birds'} is a link to {outside / 'birds'}"), headline
