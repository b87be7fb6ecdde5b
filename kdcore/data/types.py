"""Plain containers shared by the data layer: splits, dataset facts and status."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded; the message names the folder and the files expected."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered dataset, known without loading anything.

    Attributes:
        name: registry name.
        num_classes: number of classes, or None when it depends on the files (imagefolder).
        in_channels: image channels (imagefolder: 3 unless its images are all grayscale).
        image_size: side in pixels, or None when configurable (imagefolder).
        description: one line for a UI.
        embedded: True when the data ships with an installed package (no files needed).
    """

    name: str
    num_classes: int | None
    in_channels: int
    image_size: int | None
    description: str
    embedded: bool


@dataclass
class DatasetStatus:
    """Whether a dataset can be loaded now, as a cheap check for a UI.

    Attributes:
        name: registry name.
        ready: True when loading should work (files present, embedded, or download enabled).
        message: one line for the user: "embedded", "found under ...", "missing: ...".
        path: the folder looked at, or None for embedded data.
    """

    name: str
    ready: bool
    message: str
    path: Path | None


def _as_index(indices) -> Tensor:
    if isinstance(indices, Tensor):
        return indices.to(dtype=torch.long, device="cpu").reshape(-1)
    if isinstance(indices, int):
        return torch.tensor([indices], dtype=torch.long)
    return torch.as_tensor(list(indices), dtype=torch.long).reshape(-1)


@dataclass
class Split:
    """One split of a dataset, held either as tensors in memory or as a streamed Dataset.

    Attributes:
        x: (N, C, H, W) float32 images normalized with the dataset's mean/std, on CPU;
            None for a streamed split.
        y: (N,) int64 labels, also for a streamed split (so class counts are known).
        dataset: streamed split only: a Dataset whose items are (x_normalized (C,H,W), y).
    """

    x: Tensor | None
    y: Tensor
    dataset: Dataset | None = field(default=None)

    def __post_init__(self) -> None:
        if (self.x is None) == (self.dataset is None):
            raise ValueError("a Split holds exactly one of x (tensors) or dataset (streamed)")
        if self.x is not None and len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} images but y has {len(self.y)} labels")

    @property
    def streamed(self) -> bool:
        """True when images are read on demand from `dataset`."""
        return self.dataset is not None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: Sequence[int] | Tensor) -> "Split":
        """The split restricted to `indices`, in their order."""
        idx = _as_index(indices)
        if self.x is not None:
            return Split(self.x[idx], self.y[idx])
        return Split(None, self.y[idx], dataset=Subset(self.dataset, idx.tolist()))

    def images(self, indices: Sequence[int] | Tensor | int) -> Tensor:
        """Returns normalized images for the given indices, for galleries.

        Args:
            indices: positions in this split (a list, range, int64 tensor or one int).

        Returns:
            A (K, C, H, W) float32 CPU tensor.
        """
        idx = _as_index(indices)
        if self.x is not None:
            return self.x[idx]
        if len(idx) == 0:
            # shape taken from the first item, so an empty request still has (0, C, H, W)
            shape = tuple(self.dataset[0][0].shape) if len(self) else (0, 0, 0)
            return torch.empty((0, *shape), dtype=torch.float32)
        return torch.stack([self.dataset[int(i)][0] for i in idx])


@dataclass
class DataSplits:
    """A loaded dataset: train/val/test splits plus what a model needs to know about them.

    Attributes:
        name: registry name.
        num_classes: number of classes.
        in_channels: image channels.
        image_size: image side in pixels (images are square).
        class_names: one display name per class index.
        mean: per-channel mean used for normalization.
        std: per-channel standard deviation used for normalization.
        train: training split (validation already carved out).
        val: validation split, carved from train with a fixed seed; may be empty.
        test: held-out test split.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    test: Split

    def denormalize(self, x: Tensor) -> Tensor:
        """Maps normalized images back to [0, 1] for display.

        Args:
            x: (C, H, W) or (N, C, H, W) normalized images, on any device.

        Returns:
            A tensor of the same shape with values clamped to [0, 1].
        """
        shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x * std + mean).clamp_(0.0, 1.0)
