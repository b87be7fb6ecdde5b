"""Fixed-seed stratified carving of a held-out part (test or validation) from labelled data."""
from __future__ import annotations

import torch
from torch import Tensor

SPLIT_SEED = 0  # independent of the training seed, so every run sees the same splits


def stratified_split(y: Tensor, fraction: float, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Splits indices into (kept, carved) with each class carved in proportion.

    The carved part has exactly round(fraction * N) items; classes are interleaved by
    their within-class rank, so each class gets about `fraction` of its items.

    Args:
        y: (N,) integer labels.
        fraction: share to carve out, in [0, 1).
        seed: seed of the shuffle; the result depends only on (y, fraction, seed).

    Returns:
        Two sorted int64 index tensors, disjoint and covering range(N).
    """
    y = torch.as_tensor(y).long().cpu()
    n = int(y.numel())
    k = int(round(fraction * n))
    if k <= 0 or n == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    yp = y[perm]
    # group by class keeping the random order, then rank within class
    by_class = torch.sort(yp, stable=True).indices
    ys = yp[by_class]
    _, counts = torch.unique_consecutive(ys, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    sizes = torch.repeat_interleave(counts, counts)
    rank = torch.arange(n) - starts
    score = (rank.double() + 0.5) / sizes.double()
    carved_pos = torch.sort(score, stable=True).indices[:k]
    carved = perm[by_class[carved_pos]]
    mask = torch.ones(n, dtype=torch.bool)
    mask[carved] = False
    return torch.nonzero(mask).flatten(), torch.sort(carved).values
