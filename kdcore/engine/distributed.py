"""One fit on several processes (torchrun): each rank steps on its shard of every global batch.

Gradients of every trainable tensor (the student's and the method's own parts, such as FitNets
regressors) are averaged over the ranks after each backward, weighted by shard size, so a step
sees the gradient of the whole global batch, as DistributedDataParallel computes it. Buffers
(BatchNorm statistics) are taken from rank 0 at each epoch's end, before validation, so every
rank picks the same best epoch. Outside torchrun every function here is a no-op.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def launched() -> bool:
    """True inside a process torchrun started (it sets these for every rank)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device_type: str) -> torch.device:
    """Joins the process group (NCCL on CUDA, gloo elsewhere); returns this rank's device."""
    local = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device(device_type)


def check_batch(batch_size: int, phase: str) -> None:
    n = world_size()
    if batch_size % n:
        raise ValueError(f"{phase}: batch_size {batch_size} does not divide over {n} processes; give a multiple of {n}")


def shard(x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """This rank's contiguous part of a global batch, and the global batch's size."""
    n = len(y)
    if not active():
        return x, y, idx, n
    parts = [t.tensor_split(world_size())[rank()] for t in (x, y, idx)]
    return parts[0], parts[1], parts[2], n


def average_gradients(params: Iterable[nn.Parameter], local: int, total: int) -> None:
    """Sums each rank's gradient weighted by its share of the batch: the mean-loss gradient of the whole batch."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).mul_(local / total)  # one all-reduce per step
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (rank 0 alone hears a cancel or SIGTERM)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def share_buffers(*modules) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics), as DDP's broadcast_buffers does."""
    if not active():
        return
    for module in modules:
        if module is None:
            continue
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)
