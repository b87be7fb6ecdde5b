"""Batches of (x, y, idx) on the training device, for in-memory and streamed splits alike."""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from kdcore.data.augment import augment_batch
from kdcore.data.types import Split

if TYPE_CHECKING:
    from kdcore.config import AugmentConfig

_SEED_MULT = 1_000_003
MAX_DATA_WORKERS = 8  # decoding processes for a streamed split; more rarely helps one training process


def _epoch_generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    # one generator per (seed, epoch, purpose): a run is repeatable and epochs differ
    return torch.Generator(device=device).manual_seed(((seed * _SEED_MULT + epoch) * 2 + stream) & (2**63 - 1))


def _num_workers() -> int:
    """Worker processes for a streamed split: $KDCORE_DATA_WORKERS, else one per core but one, at most 8.

    One core is left to the training process itself, which feeds the device.
    """
    override = os.environ.get("KDCORE_DATA_WORKERS", "").strip()
    if override:
        if not override.isdigit():
            raise ValueError(f"KDCORE_DATA_WORKERS must be a whole number of processes, got {override!r}")
        return int(override)
    return max(0, min(MAX_DATA_WORKERS, (os.cpu_count() or 1) - 1))


class _EpochOrder(Sampler[int]):
    """The positions of one epoch, set before each pass, so one DataLoader (and its workers) serves every epoch."""

    def __init__(self, size: int):
        self.order: list[int] = list(range(size))

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)


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
        channels_last: deliver image batches in NHWC, for models in that layout.

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
        channels_last: bool = False,
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
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.num_samples = len(split)
        self.epoch = 0
        self._stream: Optional[DataLoader] = None  # a streamed split's DataLoader, made at the first pass
        self._sampler: Optional[_EpochOrder] = None
        self._labels: Optional[Tensor] = None
        if split.x is not None:
            # moved once per loader, not per batch
            self._x = self._formatted(split.x.to(self.device))  # batches indexed from it keep its layout
            self._y = split.y.to(self.device)
            self._labels = self._y

    def _formatted(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    @property
    def labels(self) -> Tensor:
        """(N,) int64 labels of the split on the device, in the split's order (moved once)."""
        if self._labels is None:
            self._labels = self.split.y.to(self.device)
        return self._labels

    def in_order(self, batch_size: int) -> "BatchLoader":
        """The same split in its own order, unaugmented, in batches of `batch_size`, for evaluation.

        Shares this loader's device tensors, so e.g. a teacher's pass over the training set
        moves nothing to the device again.
        """
        view = copy.copy(self)
        view.batch_size, view.shuffle, view.augment, view.drop_last = int(batch_size), False, None, False
        view.epoch = 0
        view._stream = view._sampler = None  # a streamed view batches differently: its own DataLoader
        return view

    def epoch_view(self, epoch: int) -> "BatchLoader":
        """A one-pass iterable of epoch `epoch`'s batches, unaugmented, sharing this loader's device tensors."""
        if self.split.x is None:
            raise ValueError("epoch_view needs a split held in memory")
        view = copy.copy(self)
        view.augment, view.epoch = None, epoch
        return view

    def sample(self, count: int) -> Tensor:
        """The split's first `count` images on the device, as batches deliver them (to size a model's parts)."""
        return self._formatted(self.split.images(range(min(count, self.num_samples))).to(self.device))

    def _order(self, epoch: int) -> Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=_epoch_generator(self.seed, epoch, 0))
        return torch.arange(self.num_samples)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        order = self._order(epoch)
        aug_gen = None
        if self.augment is not None:
            # on CUDA the draws are made on the device: no host-to-device copy per step
            on_device = self.device if self.device.type == "cuda" else "cpu"
            aug_gen = _epoch_generator(self.seed, epoch, 1, on_device)
        if self.split.x is not None:
            yield from self._iter_tensors(order, aug_gen)
        else:
            yield from self._iter_streamed(order, aug_gen)

    def _iter_tensors(self, order: Tensor, aug_gen) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        # non_blocking: on CUDA one asynchronous copy per epoch, which the host does not wait for
        order = order.to(self.device, non_blocking=True)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._x[idx]
            if self.augment is not None:
                x = augment_batch(x, self.augment, aug_gen)
            yield x, self._y[idx], idx

    def _iter_streamed(self, order: Tensor, aug_gen) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if self._stream is None:
            workers = _num_workers()
            self._sampler = _EpochOrder(self.num_samples)
            self._stream = DataLoader(
                _Indexed(self.split.dataset),
                batch_size=self.batch_size,
                sampler=self._sampler,
                num_workers=workers,
                persistent_workers=workers > 0,  # workers start once per loader, not once per epoch
                pin_memory=self.device.type == "cuda",
                drop_last=self.drop_last,
            )
        elif self._stream.persistent_workers:
            # a fresh DataLoader iterator draws its workers' base seed from the global RNG; a reused
            # one does not, so draw here: dropout then sees the same global stream as before
            torch.empty((), dtype=torch.int64).random_()
        self._sampler.order = order.tolist()
        for x, y, idx in self._stream:
            x = self._formatted(x.to(self.device, non_blocking=True))
            y = y.to(self.device, dtype=torch.long, non_blocking=True)
            idx = idx.to(self.device, dtype=torch.long, non_blocking=True)
            if self.augment is not None:
                x = augment_batch(x, self.augment, aug_gen)
            yield x, y, idx


make_loader = BatchLoader  # the public name the trainer and the pages use
