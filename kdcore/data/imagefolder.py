"""A folder of class sub-folders (torchvision's ImageFolder layout), streamed from disk."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from kdcore.data.splitting import SPLIT_SEED, stratified_split
from kdcore.data.types import DataSplits, DatasetError, DatasetStatus, Split

# the extensions torchvision's ImageFolder accepts
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGE_SIZE = 64
TEST_FRACTION = 0.2
_GRAY_MODES = {"1", "L", "LA"}
_MODE_SAMPLE = 32  # images opened (header only) to decide grayscale vs RGB
_STATS_SAMPLE = 200  # images decoded to estimate mean/std

EXPECTED = "class sub-folders (e.g. cat/, dog/) holding images (.png, .jpg, ...), optionally under train/ and test/"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


Allowed = tuple[Path, ...] | None  # resolved folders links may lead into; None: not checked


def allowed_roots(root: Path, extra_roots=()) -> tuple[Path, ...]:
    """Where an image folder's links may lead: the folder itself, the data roots and `extra_roots`, resolved."""
    from kdcore.data.sources import data_roots

    return (root.expanduser().resolve(), *data_roots(), *(Path(r).expanduser().resolve() for r in extra_roots))


def _refuse_outside(path: str, allowed: Allowed, what: str) -> None:
    """Raises DatasetError when `path` resolves outside every allowed folder (a link leading out of them)."""
    if allowed is None:
        return
    real = Path(os.path.realpath(path))
    if any(real == r or real.is_relative_to(r) for r in allowed):
        return
    from kdcore.data.sources import data_roots

    listed = ", ".join(str(r) for r in data_roots())
    raise DatasetError(f"imagefolder: {what} {path} is a link to {real}, outside the data roots ({listed}); copy "
                       f"what it holds under a data root, or add its folder to KDCORE_DATA_ROOT")


def _walk(folder: Path, allowed: Allowed = None):
    """os.walk that follows links (class folders are often symlinked) but visits each real folder once, and
    refuses a folder that resolves outside `allowed`."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link cycle, or a second link to the same folder
            dirnames.clear()
            continue
        seen.add(real)
        _refuse_outside(dirpath, allowed, "class folder" if Path(dirpath) == folder else "folder")
        dirnames.sort()
        yield dirpath, filenames


def _images_under(folder: Path, allowed: Allowed = None) -> list[str]:
    found = []
    for dirpath, filenames in _walk(folder, allowed):
        for f in sorted(filenames):
            if _is_image(f):
                path = os.path.join(dirpath, f)
                if allowed is not None and os.path.islink(path):  # its folder was checked; a linked file may not be
                    _refuse_outside(path, allowed, "image")
                found.append(path)
    return found


def _has_image(folder: Path, allowed: Allowed = None) -> bool:
    return any(any(_is_image(f) for f in filenames) for _, filenames in _walk(folder, allowed))


def _layout(root: Path) -> tuple[Path, Path | None]:
    """Returns (train folder, test folder or None) for a root, or raises DatasetError."""
    if not root.is_dir():
        raise DatasetError(f"imagefolder: folder {root} does not exist; expected {EXPECTED}")
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir():
        return train, test
    return root, None


def _scan(folder: Path, class_names: list[str] | None = None,
          allowed: Allowed = None) -> tuple[list[str], list[int], list[str]]:
    dirs = _class_dirs(folder)
    if class_names is None:
        dirs = [d for d in dirs if _has_image(d, allowed)]
        class_names = [d.name for d in dirs]
    index = {name: i for i, name in enumerate(class_names)}
    paths: list[str] = []
    targets: list[int] = []
    for d in dirs:
        files = _images_under(d, allowed)
        if not files:
            continue
        if d.name not in index:
            raise DatasetError(f"imagefolder: class folder {d} has no counterpart in the train folder")
        paths.extend(files)
        targets.extend([index[d.name]] * len(files))
    if not paths:
        raise DatasetError(f"imagefolder: no images found in {folder}; expected {EXPECTED}")
    return paths, targets, class_names


def _spread(n: int, k: int) -> list[int]:
    # evenly spaced picks touch every class, as files are grouped by class
    if n <= k:
        return list(range(n))
    return np.linspace(0, n - 1, k).round().astype(int).tolist()


def _detect_mode(paths: list[str]) -> str:
    modes = set()
    for i in _spread(len(paths), _MODE_SAMPLE):
        try:
            with Image.open(paths[i]) as im:
                modes.add(im.mode)
        except OSError as err:
            raise DatasetError(f"imagefolder: cannot read image {paths[i]}: {err}") from None
    return "L" if modes <= _GRAY_MODES else "RGB"


def load_image(path: str, mode: str, size: int) -> Tensor:
    """Reads one image as a (C, size, size) float tensor in [0, 1] (resize and centre crop)."""
    with Image.open(path) as im:
        im = ImageOps.fit(im.convert(mode), (size, size), Image.Resampling.BILINEAR)
        arr = np.array(im, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)


@functools.lru_cache(maxsize=8)
def _stats(sample: tuple[str, ...], mode: str, size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        x = torch.stack([load_image(p, mode, size) for p in sample])
    except OSError as err:
        raise DatasetError(f"imagefolder: cannot read an image: {err}") from None
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant-colour folder must not divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())


class ImageFiles(Dataset):
    """Image files decoded on demand; items are (normalized (C, H, W) float32, label int).

    Args:
        paths: image file paths.
        targets: class index per path.
        mode: PIL mode to convert to, "RGB" or "L".
        size: output side in pixels.
        mean: per-channel normalization mean.
        std: per-channel normalization std.
    """

    def __init__(self, paths: list[str], targets: list[int], mode: str, size: int, mean, std):
        self.paths = list(paths)
        self.targets = list(targets)
        self.mode = mode
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = load_image(self.paths[i], self.mode, self.size)
        return (x - self._mean) / self._std, self.targets[i]

    def subset(self, indices: Tensor) -> "ImageFiles":
        """A new ImageFiles holding only the given positions, in order."""
        idx = indices.tolist()
        return ImageFiles(
            [self.paths[i] for i in idx], [self.targets[i] for i in idx], self.mode, self.size, self.mean, self.std
        )


def load_imagefolder(cfg) -> DataSplits:
    """Builds streamed splits for an image folder; see kdcore.data.load_dataset."""
    if not cfg.root:
        raise DatasetError(f"imagefolder: set dataset.root to a folder of {EXPECTED}")
    root = Path(cfg.root).expanduser().resolve()
    size = int(cfg.image_size or DEFAULT_IMAGE_SIZE)
    train_dir, test_dir = _layout(root)
    allowed = allowed_roots(root)  # links leading out of the folder and every data root are refused
    paths, targets, class_names = _scan(train_dir, allowed=allowed)
    mode = _detect_mode(paths)
    mean, std = _stats(tuple(paths[i] for i in _spread(len(paths), _STATS_SAMPLE)), mode, size)
    full = ImageFiles(paths, targets, mode, size, mean, std)
    y_full = torch.tensor(targets, dtype=torch.long)

    if test_dir is not None:
        t_paths, t_targets, _ = _scan(test_dir, class_names, allowed)
        test_ds = ImageFiles(t_paths, t_targets, mode, size, mean, std)
        train_idx = torch.arange(len(full))
    else:
        train_idx, test_idx = stratified_split(y_full, TEST_FRACTION, SPLIT_SEED)
        test_ds = full.subset(test_idx)
    rel_keep, rel_val = stratified_split(y_full[train_idx], cfg.val_fraction, SPLIT_SEED)
    train_ds, val_ds = full.subset(train_idx[rel_keep]), full.subset(train_idx[rel_val])

    def split(ds: ImageFiles) -> Split:
        return Split(x=None, y=torch.tensor(ds.targets, dtype=torch.long), dataset=ds)

    return DataSplits(
        name="imagefolder",
        num_classes=len(class_names),
        in_channels=1 if mode == "L" else 3,
        image_size=size,
        class_names=class_names,
        mean=mean,
        std=std,
        train=split(train_ds),
        val=split(val_ds),
        test=split(test_ds),
    )


@dataclass(frozen=True)
class FolderScan:
    """What an image folder holds, read from its file names and a few image headers (nothing decoded).

    Attributes:
        root: the folder, resolved.
        class_names: class sub-folders holding images, sorted.
        train_targets: class index of each image of the train folder (the whole folder without test/).
        test_targets: class index of each image under test/, or None when the test split is carved from train.
        in_channels: 1 if the sampled images are all grayscale, else 3.
    """

    root: Path
    class_names: list[str]
    train_targets: list[int]
    test_targets: list[int] | None
    in_channels: int


def scan_imagefolder(root: str, extra_roots=()) -> FolderScan:
    """Scans an image folder as load_imagefolder would, without decoding images; raises DatasetError.

    A class folder or image linking outside the folder, the data roots and `extra_roots` is refused.
    """
    path = Path(root).expanduser().resolve()
    train_dir, test_dir = _layout(path)
    allowed = allowed_roots(path, extra_roots)
    paths, targets, class_names = _scan(train_dir, allowed=allowed)
    test_targets = _scan(test_dir, class_names, allowed)[1] if test_dir is not None else None
    return FolderScan(path, class_names, targets, test_targets, 1 if _detect_mode(paths) == "L" else 3)


def imagefolder_status(root: str | None) -> DatasetStatus:
    """Cheap readiness check: the folder exists and has class sub-folders with images."""
    if not root:
        return DatasetStatus("imagefolder", False, f"missing: set dataset.root to a folder of {EXPECTED}", None)
    path = Path(root).expanduser().resolve()
    try:
        train_dir, test_dir = _layout(path)
    except DatasetError as err:
        return DatasetStatus("imagefolder", False, f"missing: {err}", path)
    classes = [d.name for d in _class_dirs(train_dir) if _has_image(d)]
    if not classes:
        return DatasetStatus("imagefolder", False, f"missing: no {EXPECTED} under {train_dir}", path)
    extra = " (train/ and test/)" if test_dir is not None else ""
    return DatasetStatus("imagefolder", True, f"found {len(classes)} classes under {path}{extra}", path)
