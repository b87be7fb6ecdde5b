"""A fit's resumable state: everything saved at an epoch's end so a fit killed later ends as if never stopped.

The model, the distiller's learnable parts, the optimizer and schedule, the best epoch so far and every
random generator the fit draws from (torch, CUDA, Python, NumPy and kdcore's dropout generator).
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from kdcore.engine.checkpoint import save_whole
from kdcore.engine.rng import global_rng_lock


@dataclass
class Progress:
    """Where a fit stands between epochs: what resume needs besides the modules' own state."""

    best_acc: float = float("-inf")
    best_epoch: int = 0
    best_state: Optional[dict] = None  # the model's weights at its best epoch
    epochs_without_gain: int = 0
    global_step: int = 0
    epoch: int = 0  # epochs finished


def capture_rng(dropout_rng: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "dropout": dropout_rng.get_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, dropout_rng: torch.Generator) -> None:
    with global_rng_lock:
        torch.set_rng_state(state["torch"])
    if "dropout" in state:
        dropout_rng.set_state(state["dropout"].cpu())
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_fit_state(path: Path, progress: Progress, model: nn.Module, distiller: Optional[nn.Module],
                   optimizer: torch.optim.Optimizer, scheduler: Any, dropout_rng: torch.Generator) -> None:
    save_whole(dict(  # a kill mid-write leaves the previous epoch's state whole
        epoch=progress.epoch, model=model.state_dict(),
        distiller=distiller.state_dict() if distiller is not None else None, optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict() if scheduler is not None else None, best_acc=progress.best_acc,
        best_epoch=progress.best_epoch, best_state=progress.best_state,
        epochs_without_gain=progress.epochs_without_gain, global_step=progress.global_step,
        rng=capture_rng(dropout_rng)), path)


def load_fit_state(path: Optional[Path], device: torch.device, model: nn.Module, distiller: Optional[nn.Module],
                   optimizer: torch.optim.Optimizer, scheduler: Any, dropout_rng: torch.Generator) -> Progress:
    """Restores a saved fit into the given parts and returns its progress; a fresh Progress when none is saved."""
    if path is None or not Path(path).is_file():
        return Progress()
    with torch.serialization.safe_globals([collections.Counter]):  # a step schedule's milestones
        saved = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(saved["model"])
    if distiller is not None and saved.get("distiller") is not None:
        distiller.load_state_dict(saved["distiller"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    restore_rng(saved["rng"], dropout_rng)
    return Progress(best_acc=saved["best_acc"], best_epoch=saved["best_epoch"], best_state=saved["best_state"],
                    epochs_without_gain=saved["epochs_without_gain"], global_step=saved["global_step"],
                    epoch=saved["epoch"])
