"""Named spans of a training step for torch.profiler, so time can be put to its part (bench/where_time_goes.py)."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def region(name: str):
    """A torch.profiler span called `name`; nothing at all when no profiler runs, so the step pays nothing."""
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else nullcontext()
