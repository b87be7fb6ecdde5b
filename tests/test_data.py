"""Tests of the data layer: sources, splits, safe CIFAR reading, loaders and augmentation."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.config import AugmentConfig, DatasetConfig
from kdcore.data import (
    DATASETS,
    DatasetError,
    Split,
    augment_batch,
    data_root,
    dataset_info,
    dataset_status,
    load_dataset,
    make_loader,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason=f"shared MNIST data not found at {SHARED_DATA}"
)


def _ids(split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x.flatten(1)}


# ---------------------------------------------------------------- registry and info


def test_registry_names_and_info():
    assert set(DATASETS.names()) >= {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"}
    assert dataset_info("digits").embedded and dataset_info("digits").image_size == 8
    assert (dataset_info("mnist").num_classes, dataset_info("mnist").in_channels) == (10, 1)
    assert (dataset_info("cifar100").num_classes, dataset_info("cifar100").in_channels) == (100, 3)
    assert dataset_info("imagefolder").num_classes is None
    with pytest.raises(KeyError):
        dataset_info("nope")


def test_data_root(monkeypatch, tmp_path):
    assert data_root(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.setenv("KDCORE_DATA_ROOT", str(tmp_path / "env"))
    assert data_root(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv("KDCORE_DATA_ROOT")
    assert data_root(None) == (Path.cwd() / "data").resolve()


# ---------------------------------------------------------------- digits


def test_digits_shapes_normalization_and_fixed_splits():
    from sklearn.datasets import load_digits

    from kdcore.data import sources

    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.1))
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, 8)
    assert d.train.x.shape[1:] == (1, 8, 8) and d.train.x.dtype == torch.float32
    assert d.train.y.dtype == torch.int64
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert len(d.test) == round(0.2 * 1797)
    assert len(d.val) == round(0.1 * (1797 - len(d.test)))
    assert abs(d.train.x.mean().item()) < 0.05 and abs(d.train.x.std().item() - 1) < 0.05
    assert torch.bincount(d.test.y, minlength=10).min() >= 30  # stratified: every class tested

    # the splits partition the original images exactly (so they are disjoint)
    raw = torch.cat([d.denormalize(s.x) for s in (d.train, d.val, d.test)]) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    got = sorted(r.tobytes() for r in raw.round().to(torch.uint8).flatten(1).numpy())
    want = sorted(r.tobytes() for r in load_digits().images.astype(np.uint8).reshape(1797, -1))
    assert got == want

    sources._raw.cache_clear()  # a fresh read must give the very same splits
    d2 = load_dataset(DatasetConfig(name="digits", val_fraction=0.1))
    for a, b in ((d.train, d2.train), (d.val, d2.val), (d.test, d2.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    d3 = load_dataset(DatasetConfig(name="digits", val_fraction=0.2))
    assert torch.equal(d3.test.x, d.test.x)  # test does not depend on val_fraction


def test_val_fraction_zero_gives_empty_val():
    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.0))
    assert len(d.val) == 0 and d.val.x.shape == (0, 1, 8, 8)
    assert len(make_loader(d.val, 16, shuffle=True)) == 0 and list(make_loader(d.val, 16, shuffle=True)) == []


# ---------------------------------------------------------------- MNIST and Fashion-MNIST


@needs_shared
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_like_from_shared_folder(name):
    d = load_dataset(DatasetConfig(name=name, root=str(SHARED_DATA), val_fraction=0.1))
    assert len(d.train) + len(d.val) == 60000 and len(d.val) == 6000
    assert len(d.test) == 10000
    assert d.train.x.shape[1:] == (1, 28, 28) and d.test.x.shape == (10000, 1, 28, 28)
    assert d.num_classes == 10 and len(d.class_names) == 10
    val_counts = torch.bincount(d.val.y, minlength=10)
    assert val_counts.min() >= 540 and val_counts.max() <= 680  # about 10% of each class
    assert abs(d.train.x.mean().item()) < 0.05
    assert dataset_status(name, str(SHARED_DATA)).ready


# ---------------------------------------------------------------- CIFAR in its real on-disk format


def _batch(n: int, labels_key: str, rng: np.random.Generator, num_classes: int) -> dict:
    labels = rng.integers(0, num_classes, n).tolist()
    d = {b"batch_label": b"test batch", labels_key.encode(): labels, b"filenames": [b"x.png"] * n}
    d[b"data"] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    if labels_key == "fine_labels":
        d[b"coarse_labels"] = [l // 5 for l in labels]
    return d


def _dump(obj, path: Path, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, n: int = 6, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _batch(n, "labels", rng, 10)
        _dump(batches[name], folder / name, protocol)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump({b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072}, folder / "batches.meta", protocol)
    return batches


def write_cifar100(root: Path, n: int = 10) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {name: _batch(n, "fine_labels", rng, 100) for name in ("train", "test")}
    for name, b in batches.items():
        _dump(b, folder / name, 4)
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    _dump(meta, folder / "meta", 4)
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_real_format(tmp_path, protocol):
    batches = write_cifar10(tmp_path, n=6, protocol=protocol)
    assert dataset_status("cifar10", str(tmp_path)).ready
    d = load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path), val_fraction=0.0))
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 3, 32)
    assert d.class_names[0] == "airplane" and d.class_names[9] == "truck"
    assert d.train.x.shape == (30, 3, 32, 32) and d.test.x.shape == (6, 3, 32, 32)
    want_y = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert d.train.y.tolist() == want_y and d.test.y.tolist() == batches["test_batch"][b"labels"]
    # rows are 1024 red, then green, then blue values
    pixels = (d.denormalize(d.test.x) * 255).round().to(torch.uint8)
    assert torch.equal(pixels.reshape(6, 3072), torch.from_numpy(batches["test_batch"][b"data"]))


def test_cifar100_real_format(tmp_path):
    batches = write_cifar100(tmp_path, n=10)
    d = load_dataset(DatasetConfig(name="cifar100", root=str(tmp_path), val_fraction=0.2))
    assert (d.num_classes, d.in_channels, len(d.class_names)) == (100, 3, 100)
    assert d.class_names[42] == "class42"
    assert len(d.train) == 8 and len(d.val) == 2 and d.test.x.shape == (10, 3, 32, 32)
    assert sorted(d.train.y.tolist() + d.val.y.tolist()) == sorted(batches["train"][b"fine_labels"])


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_SystemCall, _Exec])
@pytest.mark.parametrize("target", ["data_batch_1", "batches.meta"])
def test_malicious_cifar_pickle_is_refused(tmp_path, payload, target):
    write_cifar10(tmp_path, n=2)
    marker = tmp_path / "pwned"
    evil = {b"data": payload(marker), b"labels": [0], b"label_names": payload(marker)}
    _dump(evil, tmp_path / "cifar-10-batches-py" / target, 4)
    with pytest.raises(DatasetError, match="not allowed|refusing"):
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()


# ---------------------------------------------------------------- imagefolder


def _write_images(folder: Path, classes: int = 3, per_class: int = 6, mode: str = "RGB", size=(20, 16)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(folder / f"class_{c}" / f"img_{i}.png")


def test_imagefolder_loads_and_streams(tmp_path):
    _write_images(tmp_path / "imgs", classes=3, per_class=6)
    (tmp_path / "imgs" / "empty_dir").mkdir()  # folders without images are not classes
    assert dataset_status("imagefolder", str(tmp_path / "imgs")).ready
    cfg = DatasetConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=16, val_fraction=0.2)
    d = load_dataset(cfg)
    assert d.class_names == ["class_0", "class_1", "class_2"]
    assert (d.num_classes, d.in_channels, d.image_size) == (3, 3, 16)
    assert len(d.train) + len(d.val) + len(d.test) == 18 and len(d.test) == round(0.2 * 18)
    assert d.train.x is None and d.train.dataset is not None
    assert d.test.images([0, 1]).shape == (2, 3, 16, 16)

    aug = AugmentConfig(flip=True, crop_padding=2)
    loader = make_loader(d.train, 4, shuffle=True, augment=aug, seed=3)
    seen = []
    for x, y, idx in loader:
        assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
        assert idx.dtype == torch.int64 and torch.equal(y, d.train.y[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(d.train))) and len(loader) == -(-len(d.train) // 4)

    # same files, same splits
    d2 = load_dataset(cfg)
    assert torch.equal(d.test.images(range(len(d.test))), d2.test.images(range(len(d2.test))))


def test_imagefolder_grayscale_and_train_test_layout(tmp_path):
    _write_images(tmp_path / "g" / "train", classes=2, per_class=5, mode="L")
    _write_images(tmp_path / "g" / "test", classes=2, per_class=3, mode="L")
    d = load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "g"), image_size=8, val_fraction=0.0))
    assert d.in_channels == 1 and len(d.train) == 10 and len(d.test) == 6 and len(d.val) == 0
    assert d.test.y.tolist() == [0, 0, 0, 1, 1, 1]
    x, y, idx = next(iter(make_loader(d.test, 6, shuffle=False)))
    assert x.shape == (6, 1, 8, 8) and idx.tolist() == list(range(6))


def test_imagefolder_missing_or_empty(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        load_dataset(DatasetConfig(name="imagefolder", root=str(missing)))
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DatasetError, match=str(tmp_path / "empty")):
        load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "empty")))
    assert not dataset_status("imagefolder", str(missing)).ready
    assert not dataset_status("imagefolder", str(tmp_path / "empty")).ready
    assert not dataset_status("imagefolder", None).ready


# ---------------------------------------------------------------- missing data and status


@pytest.mark.parametrize(
    "name,folder,file",
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
        ("cifar100", "cifar-100-python", "meta"),
    ],
)
def test_missing_dataset_raises_naming_path(tmp_path, name, folder, file):
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig(name=name, root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and file in msg and "download: true" in msg
    status = dataset_status(name, str(tmp_path))
    assert not status.ready and status.message.startswith("missing") and status.path == tmp_path / folder
    assert dataset_status(name, str(tmp_path), download=True).ready


def test_dataset_status_each():
    s = dataset_status("digits")
    assert s.ready and "embedded" in s.message and s.path is None
    assert not dataset_status("no_such_dataset").ready
    if SHARED_DATA.is_dir():
        s = dataset_status("mnist", str(SHARED_DATA))
        raw = (SHARED_DATA / "MNIST" / "raw").resolve()  # the data folder may be reached through a link
        assert s.ready and s.path.resolve() == raw and s.message == f"found under {s.path}"


# ---------------------------------------------------------------- BatchLoader


def _toy_split(n: int = 10) -> Split:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return Split(x=x, y=torch.arange(n) % 3)


def test_loader_batches_cover_each_index_once():
    split = _toy_split(10)
    assert len(make_loader(split, 4, shuffle=True)) == 3
    assert len(make_loader(split, 4, shuffle=True, drop_last=True)) == 2
    loader = make_loader(split, 4, shuffle=True, seed=1)
    for _ in range(2):
        seen = []
        for x, y, idx in loader:
            assert torch.equal(x[:, 0, 0, 0], idx.float()) and torch.equal(y, split.y[idx])
            seen += idx.tolist()
        assert sorted(seen) == list(range(10))
    assert loader.num_samples == 10
    order = torch.cat([idx for _, _, idx in make_loader(split, 4, shuffle=False)])
    assert order.tolist() == list(range(10))


def test_loader_shuffle_repeatable_and_changes_per_epoch():
    split = _toy_split(64)

    def epochs(seed):
        loader = make_loader(split, 16, shuffle=True, seed=seed)
        return [torch.cat([idx for _, _, idx in loader]) for _ in range(2)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], c[0])


def test_loader_augments_repeatably():
    d = load_dataset(DatasetConfig(name="digits"))
    aug = AugmentConfig(crop_padding=2, flip=True, rotation=10)
    x1 = next(iter(make_loader(d.train, 32, shuffle=True, augment=aug, seed=5)))[0]
    x2, _, idx = next(iter(make_loader(d.train, 32, shuffle=True, augment=aug, seed=5)))
    assert torch.equal(x1, x2) and x1.shape == (32, 1, 8, 8)
    assert not torch.equal(x1, d.train.x[idx])


# ---------------------------------------------------------------- augment_batch


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_off_is_identity():
    x = torch.randn(4, 3, 8, 8)
    assert augment_batch(x, AugmentConfig(), _gen()) is x


def test_flip_flips_some_images_and_keeps_others():
    x = torch.randn(64, 3, 8, 8)
    out = augment_batch(x, AugmentConfig(flip=True), _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54


def test_crop_with_padding_shifts_content():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 6:10, 6:10] = torch.arange(16.0).view(4, 4) + 1  # a patch away from the borders
    out = augment_batch(x, AugmentConfig(crop_padding=3), _gen())
    assert out.shape == x.shape
    shifts = set()
    for i in range(64):
        match = [
            (dy, dx)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if torch.equal(out[i], torch.roll(x[i], shifts=(dy, dx), dims=(1, 2)))
        ]
        assert len(match) == 1  # each image is its input shifted by up to the padding
        shifts.add(match[0])
    assert len(shifts) > 10


def test_rotation_changes_image_but_keeps_mean():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bar = ((yy - 15.5).abs() < 2) & ((xx - 15.5).abs() < 10)  # a horizontal bar in the middle
    x = bar.float().expand(16, 3, 32, 32).clone()
    out = augment_batch(x, AugmentConfig(rotation=30), _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    change = (out - x).abs().flatten(1).amax(1)
    assert bool((change > 0).all()) and change.max() > 0.5  # every image changed, some a lot
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), rtol=0.05)
    again = augment_batch(x, AugmentConfig(rotation=30), _gen())
    assert torch.equal(out, again)


def test_an_image_folder_with_a_symlink_cycle_loads_once(tmp_path):
    from PIL import Image

    from kdcore.config import DatasetConfig
    from kdcore.data import load_dataset

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("L", (12, 12), color=40 * i).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")  # a cycle: a/loop -> a
    data = load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.0))
    assert len(data.train) + len(data.test) == 10
