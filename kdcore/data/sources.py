"""The registered datasets: where their files live, how they are read, and how they are split."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from kdcore.data.cifar import CIFAR_LAYOUT, cifar_files, read_cifar
from kdcore.data.imagefolder import imagefolder_status, load_imagefolder
from kdcore.data.splitting import SPLIT_SEED, stratified_split
from kdcore.data.types import DataSplits, DatasetError, DatasetInfo, DatasetStatus, Split
from kdcore.registry import Registry

if TYPE_CHECKING:
    from kdcore.config import DatasetConfig

DATASETS: Registry[Callable[["DatasetConfig"], DataSplits]] = Registry("dataset")

DIGITS_TEST_FRACTION = 0.2

_INFO = {
    "digits": DatasetInfo(
        "digits", 10, 1, 8, "scikit-learn handwritten digits: 1,797 8x8 grayscale images, 10 classes", True
    ),
    "mnist": DatasetInfo("mnist", 10, 1, 28, "MNIST handwritten digits: 70,000 28x28 grayscale images", False),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, 1, 28, "Fashion-MNIST clothing: 70,000 28x28 grayscale images, 10 classes", False
    ),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, "CIFAR-10: 60,000 32x32 colour images, 10 classes", False),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, "CIFAR-100: 60,000 32x32 colour images, 100 fine classes", False
    ),
    "imagefolder": DatasetInfo(
        "imagefolder",
        None,
        3,
        None,
        "your own images: a folder of class sub-folders, resized to dataset.image_size (default 64); "
        "1 channel if all are grayscale",
        False,
    ),
}

# the usual published per-channel statistics of each training set
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_MNIST_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def data_root(root: str | None) -> Path:
    """Resolves the data folder.

    Args:
        root: an explicit folder, or None.

    Returns:
        `root` if given, else the first of $KDCORE_DATA_ROOT if set, else ./data; absolute.
    """
    chosen = root or data_roots()[0]
    return Path(chosen).expanduser().resolve()


def data_roots() -> list[Path]:
    """The folders datasets may be read from: $KDCORE_DATA_ROOT (several joined by os.pathsep), else ./data.

    The first is the default dataset.root; an image folder must lie inside one of them.
    """
    listed = [r for r in os.environ.get("KDCORE_DATA_ROOT", "").split(os.pathsep) if r.strip()]
    return [Path(r).expanduser().resolve() for r in listed or ["data"]]


def _folder_and_files(name: str, root: Path) -> tuple[Path, list[str]]:
    if name in _MNIST_FOLDER:
        return root / _MNIST_FOLDER[name] / "raw", list(_MNIST_FILES)
    return root / CIFAR_LAYOUT[name]["folder"], cifar_files(name)


def _missing(folder: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _missing_message(name: str, folder: Path, missing: list[str]) -> str:
    msg = f"{name}: missing {', '.join(missing)} under {folder}"
    if name in _MNIST_FOLDER and all((folder / f"{f}.gz").is_file() for f in missing):
        # torchvision extracts present .gz files on download=True without using the network
        return msg + "; the .gz files are there: set dataset.download: true to extract them"
    return msg + "; set dataset.download: true or put the files there (torchvision's layout)"


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}
    root.mkdir(parents=True, exist_ok=True)
    try:
        cls[name](str(root), train=True, download=True)
        cls[name](str(root), train=False, download=True)
    except Exception as err:  # noqa: BLE001 - network and archive errors all mean "not available"
        raise DatasetError(f"{name}: download into {root} failed: {err}") from err


def _ensure_files(name: str, root: Path, download: bool) -> None:
    folder, files = _folder_and_files(name, root)
    missing = _missing(folder, files)
    if not missing:
        return
    if not download:
        raise DatasetError(_missing_message(name, folder, missing))
    _download(name, root)
    missing = _missing(folder, files)
    if missing:
        raise DatasetError(f"{name}: download finished but {', '.join(missing)} still missing under {folder}")


@dataclass(frozen=True)
class _Raw:
    """Undecoded arrays of an in-memory dataset: uint8 (N, C, H, W) images and int64 labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: tuple[str, ...]
    scale: float  # divides the uint8 values into [0, 1]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _read_digits() -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    y = torch.from_numpy(d.target.astype(np.int64))
    # no official test split: carve a fixed stratified one so every run tests on the same images
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_FRACTION, SPLIT_SEED)
    train = x[train_idx].float() / 16.0
    mean, std = (train.mean().item(),), (train.std().item(),)
    names = tuple(str(int(t)) for t in d.target_names)
    return _Raw(x[train_idx], y[train_idx], x[test_idx], y[test_idx], names, 16.0, mean, std)


def _read_mnist(name: str, root: Path) -> _Raw:
    import torchvision.datasets as tvd

    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    try:
        # .data/.targets are whole tensors read straight from the idx files, no per-image PIL
        train, test = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as err:
        folder, _ = _folder_and_files(name, root)
        raise DatasetError(f"{name}: cannot read the files under {folder}: {err}") from None
    mean, std = _STATS[name]
    return _Raw(
        train.data.unsqueeze(1).contiguous(),
        train.targets.long(),
        test.data.unsqueeze(1).contiguous(),
        test.targets.long(),
        tuple(train.classes),
        255.0,
        mean,
        std,
    )


def _read_cifar(name: str, root: Path) -> _Raw:
    train_x, train_y, test_x, test_y, names = read_cifar(name, root)
    mean, std = _STATS[name]
    return _Raw(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        tuple(names),
        255.0,
        mean,
        std,
    )


@functools.lru_cache(maxsize=4)
def _raw(name: str, root: str) -> _Raw:
    # cached per (name, resolved root) so repeated runs in one process skip the file reads
    if name == "digits":
        return _read_digits()
    if name in _MNIST_FOLDER:
        return _read_mnist(name, Path(root))
    return _read_cifar(name, Path(root))


def _build_splits(name: str, raw: _Raw, val_fraction: float) -> DataSplits:
    mean_t = torch.tensor(raw.mean).view(1, -1, 1, 1)
    std_t = torch.tensor(raw.std).view(1, -1, 1, 1)

    def prep(x: Tensor) -> Tensor:
        return x.float().div_(raw.scale).sub_(mean_t).div_(std_t)

    keep, val = stratified_split(raw.train_y, val_fraction, SPLIT_SEED)
    _, c, h, w = raw.train_x.shape
    return DataSplits(
        name=name,
        num_classes=len(raw.class_names),
        in_channels=c,
        image_size=h,
        class_names=list(raw.class_names),
        mean=raw.mean,
        std=raw.std,
        train=Split(prep(raw.train_x[keep]), raw.train_y[keep]),
        val=Split(prep(raw.train_x[val]), raw.train_y[val]),
        test=Split(prep(raw.test_x), raw.test_y.clone()),
    )


def _in_memory(name: str, cfg: "DatasetConfig") -> DataSplits:
    if name == "digits":
        raw = _raw(name, "")
    else:
        root = data_root(cfg.root)
        _ensure_files(name, root, cfg.download)
        raw = _raw(name, str(root))
    return _build_splits(name, raw, cfg.val_fraction)


IN_MEMORY_SOURCES = {
    "digits": "scikit-learn's 8x8 digits, with a fixed stratified 20% test split.",
    "mnist": "MNIST from <root>/MNIST/raw (torchvision's layout).",
    "fashion_mnist": "Fashion-MNIST from <root>/FashionMNIST/raw (torchvision's layout).",
    "cifar10": "CIFAR-10 from <root>/cifar-10-batches-py, read with a restricted unpickler.",
    "cifar100": "CIFAR-100 (fine labels) from <root>/cifar-100-python, read with a restricted unpickler.",
}


def _register_in_memory(name: str, doc: str) -> None:
    def load(cfg: "DatasetConfig") -> DataSplits:
        return _in_memory(name, cfg)

    load.__name__, load.__doc__ = f"load_{name}", doc  # the docstring is the dataset's description
    DATASETS.register(name)(load)


for _name, _doc in IN_MEMORY_SOURCES.items():
    _register_in_memory(_name, _doc)

DATASETS.register("imagefolder")(load_imagefolder)


def dataset_info(name: str) -> DatasetInfo:
    """Static facts about a dataset; loads nothing.

    Args:
        name: a registered dataset name.

    Returns:
        The dataset's DatasetInfo (a generic one for datasets registered elsewhere).

    Raises:
        KeyError: the name is not registered.
    """
    loader = DATASETS.get(name)
    if name in _INFO:
        return _INFO[name]
    doc = (loader.__doc__ or name).strip().splitlines()[0]
    return DatasetInfo(name, None, 3, None, doc, False)


def dataset_status(name: str, root: str | None = None, download: bool = False) -> DatasetStatus:
    """Cheap check of whether a dataset can be loaded now, for a UI; reads no image data.

    Args:
        name: a registered dataset name.
        root: the configured dataset.root (for imagefolder, the image folder itself).
        download: whether dataset.download is enabled.

    Returns:
        A DatasetStatus whose message reads "embedded ...", "found under ..." or "missing: ...".
    """
    if name not in DATASETS:
        return DatasetStatus(name, False, f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}", None)
    if name == "digits":
        return DatasetStatus(name, True, "embedded (scikit-learn load_digits)", None)
    if name == "imagefolder":
        return imagefolder_status(root)
    if name not in _INFO:
        return DatasetStatus(name, True, "registered elsewhere; not checked", None)
    folder, files = _folder_and_files(name, data_root(root))
    missing = _missing(folder, files)
    if not missing:
        return DatasetStatus(name, True, f"found under {folder}", folder)
    if download:
        return DatasetStatus(name, True, f"missing under {folder}; will be downloaded (download enabled)", folder)
    expected = ", ".join(missing)
    hint = _missing_message(name, folder, missing).split("; ", 1)[1]
    return DatasetStatus(name, False, f"missing: expected {expected} under {folder}; {hint}", folder)


def load_dataset(cfg: "DatasetConfig") -> DataSplits:
    """Loads the configured dataset with fixed-seed validation (and, where needed, test) splits.

    Args:
        cfg: dataset section of the run config.

    Returns:
        DataSplits with normalized tensors (in-memory datasets) or streamed Datasets (imagefolder).

    Raises:
        DatasetError: files missing or unreadable; the message names the folder and files expected.
    """
    try:
        loader = DATASETS.get(cfg.name)
    except KeyError as err:
        raise DatasetError(str(err.args[0])) from None
    return loader(cfg)
