"""Saving and safely loading model weights.

Files are dicts of plain values and tensors, read back with
torch.load(weights_only=True), so a pickle that would run code is refused.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.models import create_model


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason in words."""


def save_checkpoint(path: Path, model: nn.Module, *, arch: str, num_classes: int, in_channels: int,
                    image_size: int, options: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": arch, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
        "options": dict(options or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a reader never sees half a file


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint's contents; refuses anything but tensors and plain values."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        offending = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "global" in line]
        if offending:
            raise CheckpointError(
                f"refused {path.name}: it holds Python objects other than tensors, which could run code when loaded "
                f"({offending[0][:160]})"
            ) from None
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint (a file saved with torch.save)") from None
    except Exception as err:  # truncated zip, random bytes, wrong format
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {type(err).__name__}: {str(err)[:200]}") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return {"state_dict": payload["model"]}
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"state_dict": payload}
    raise CheckpointError(f"{path.name} holds no state_dict (a mapping of parameter names to tensors)")


def load_model_from_checkpoint(path: str | Path, *, arch: str, num_classes: int, in_channels: int,
                               image_size: int, options: dict[str, Any] | None = None) -> nn.Module:
    """Builds `arch` and loads the checkpoint into it, explaining any mismatch."""
    payload = read_checkpoint(path)
    name = Path(path).name
    if payload.get("arch") not in (None, arch):
        raise CheckpointError(f"{name} holds a {payload['arch']!r} model, but the teacher architecture is {arch!r}")
    if payload.get("num_classes") not in (None, num_classes):
        raise CheckpointError(f"{name} was trained for {payload['num_classes']} classes, but this dataset has {num_classes}")
    model = create_model(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                         **(options if options is not None else payload.get("options", {})))
    state = payload["state_dict"]
    misfit = state_dict_misfit(model.state_dict(), state)
    if misfit:
        raise CheckpointError(
            f"{name} does not fit a {arch!r} model for {num_classes} classes and {in_channels} channels: {misfit}")
    model.load_state_dict(state)
    return model


def state_dict_misfit(own: dict, state: dict) -> str:
    """How a file's weights differ from a model's, in words ('' when they fit): shapes, missing, unexpected."""
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    details = []
    if mismatched:
        details.append("shape mismatch for " + "; ".join(mismatched[:3]))
    if missing:
        details.append(f"{len(missing)} missing weights (e.g. {', '.join(missing[:3])})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(details)
