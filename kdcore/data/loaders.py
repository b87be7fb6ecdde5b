"""Batches of (x, y, idx) on the training device, for in-memory and streamed splits alike."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdcore.data.augment import augment_batch
from kdcore.data.types import Split

if TYPE_CHECKING:
    from kdcore.config import AugmentConfig

_SEED_MULT = 1_000_003


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # one generator per (seed, epoch, purpose): a run is repeatable and epochs differ
    return torch.Generator().manual_seed(((seed * _SEED_MULT + epoch) * 2 + stream) & (2**63 - 1))


def _num_workers() -> int:
    try:
        return min(2, os.cpu_count() or 0)
    except Exception:  # noqa: BLE001 - any failure means "no workers"
        return 0


class _Indexed(Dataset):
    """Adds each item's index, so streamed batches carry idx like tensor batches."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


class BatchLoader:
    """Iterable of (x, y, idx) batches already on `device`; len() is the number of batches per epoch.

    idx holds int64 positions in the split, e.g. to look up cached teacher logits.
    Each iteration is one epoch; the shuffle order depends only on (seed, epoch).

    Args:
        split: the split to iterate.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (repeatably, from seed and epoch number).
        device: where batches are delivered.
        augment: augmentations applied on the device; None or all-off disables them.
        seed: seed for shuffling and augmentation.
        drop_last: drop the final incomplete batch.

    Attributes:
        num_samples: images in the split.
        batch_size: images per batch.
        epoch: epochs started so far; the next iteration uses this value (settable, to resume).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        device: torch.device | str = "cpu",
        augment: "AugmentConfig | None" = None,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = int(seed)
        self.drop_last = drop_last
        self.num_samples = len(split)
        self.epoch = 0
        if split.x is not None:
            # moved once per loader, not per batch
            self._x = split.x.to(self.device)
            self._y = split.y.to(self.device)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def sample(self, count: int) -> Tensor:
        """The split's first `count` images on the device, as batches deliver them (to size a model's parts)."""
        return self.split.images(range(min(count, self.num_samples))).to(self.device)

    def _order(self, epoch: int) -> Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=_epoch_generator(self.seed, epoch, 0))
        return torch.arange(self.num_samples)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        order = self._order(epoch)
        aug_gen = _epoch_generator(self.seed, epoch, 1) if self.augment is not None else None
        if self.split.x is not None:
            yield from self._iter_tensors(order, aug_gen)
        else:
            yield from self._iter_streamed(order, aug_gen)

    def _iter_tensors(self, order: Tensor, aug_gen) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order = order.to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._x[idx]
            if self.augment is not None:
                x = augment_batch(x, self.augment, aug_gen)
            yield x, self._y[idx], idx

    def _iter_streamed(self, order: Tensor, aug_gen) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        workers = _num_workers()
        loader = DataLoader(
            _Indexed(self.split.dataset),
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last,
        )
        for x, y, idx in loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, dtype=torch.long, non_blocking=True)
            idx = idx.to(self.device, dtype=torch.long, non_blocking=True)
            if self.augment is not None:
                x = augment_batch(x, self.augment, aug_gen)
            yield x, y, idx


make_loader = BatchLoader  # the public name the trainer and the pages use
