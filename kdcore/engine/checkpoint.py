"""Saving and safely loading model weights, whole or with a new classifier for another class count.

Files are dicts of plain values and tensors, read back with
torch.load(weights_only=True), so a pickle that would run code is refused.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from kdcore.engine.rng import global_rng_lock
from kdcore.models import create_model
from kdcore.record.folder import PARTIAL_SUFFIX


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason in words."""


NO_SPACE = "no space left on the disk of"  # in a run's error when a write ran out of room


class NoSpaceLeft(OSError):
    """A file could not be written because its disk is full; the message names the folder and what is free."""


def no_space(folder: Path) -> NoSpaceLeft:
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MB free"
    except OSError:
        free = "its free space unknown"
    return NoSpaceLeft(errno.ENOSPC, f"{NO_SPACE} {folder} ({free}): free some space there, then resume the run "
                                     "(kdcore runs resume ID); what finished before is kept")


def save_whole(obj: Any, path: Path) -> None:
    """torch.save through a temporary file renamed into place: a reader never sees half a file, and a write
    that fails (a full disk) leaves no partial file behind, only the previous version if there was one."""
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # torch reports a short write on a full disk as "unexpected pos", not as ENOSPC
        if _out_of_space(err, path.parent):
            raise no_space(path.parent) from None
        raise


def _out_of_space(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "file write failed" in str(err)):
        try:
            return shutil.disk_usage(folder).free < 64 * 2**20
        except OSError:
            return False
    return False


class Pretrained(NamedTuple):
    """A model built for this dataset with a checkpoint's weights loaded."""

    model: nn.Module
    new_head: bool  # its classifier was left freshly initialised: the file's was for another class count
    options: dict[str, Any]  # the model arguments it was built with (the file's when none were given)


def save_checkpoint(path: Path, model: nn.Module, *, arch: str, num_classes: int, in_channels: int,
                    image_size: int, options: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": arch, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
        "options": dict(options or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    save_whole(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint's contents; refuses anything but tensors and plain values."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  torch raises anything from KeyError to its own internal asserts
        raise _unreadable(path, err) from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return {"state_dict": payload["model"]}
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"state_dict": payload}
    raise CheckpointError(f"{path.name} holds no model weights (a mapping of layer names to tensors): save them "
                          "with torch.save(model.state_dict(), PATH) and choose that file")


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since PyTorch 1.6


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    """Why torch.load refused a file, as one sentence of ours: the library's text (KeyError: 101, advice to
    call add_safe_globals, internal asserts) tells a person nothing about their file."""
    name = path.name
    found = _GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
    if found:
        return CheckpointError(
            f"{name} was refused: besides weights it holds a Python object ({found[1]}) that could run code when "
            "loaded; save only the weights with torch.save(model.state_dict(), PATH) and choose that file")
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if not head:
        return CheckpointError(f"{name} is empty: choose the file torch.save wrote, or upload it again")
    if head == _ZIP_MAGIC:
        return CheckpointError(f"{name} is damaged or cut short (a PyTorch checkpoint, but not all of it can be "
                               "read): copy or upload it again, or save it again with torch.save")
    return CheckpointError(f"{name} is not a PyTorch checkpoint (a file written by torch.save): choose the .pt or "
                           ".pth file that holds the model's weights")


def read_compatible(path: str | Path, *, arch: str, num_classes: int, in_channels: int, image_size: int,
                    new_head: bool = False, role: str = "teacher") -> dict[str, Any]:
    """A checkpoint's contents once its recorded architecture and image shape fit; refuses the rest in words.

    Args:
        new_head: a file for another class count is accepted; its classifier will be replaced.
        role: "teacher" or "student", for the messages.
    """
    payload = read_checkpoint(path)
    name = Path(path).name
    if payload.get("arch") not in (None, arch):
        raise CheckpointError(f"{name} holds a {payload['arch']!r} model, but the {role} architecture is {arch!r}")
    had = {"in_channels": int(payload.get("in_channels") or in_channels),
           "image_size": int(payload.get("image_size") or image_size)}
    differ = [f"{label} {had[key]} vs {wanted}" for key, label, wanted in
              (("in_channels", "channels", in_channels), ("image_size", "image size", image_size))
              if had[key] != int(wanted)]
    if differ:  # a CNN with adaptive pooling would load such weights without a shape error, and misread the images
        raise CheckpointError(f"{name} was trained on {had['in_channels']}×{had['image_size']}×{had['image_size']} "
                              f"images, but this dataset has {in_channels}×{image_size}×{image_size} images "
                              f"({'; '.join(differ)})")
    if not new_head and payload.get("num_classes") not in (None, num_classes):
        raise CheckpointError(f"{name} was trained for {payload['num_classes']} classes, but this dataset has "
                              f"{num_classes}; fine-tuning it (finetune_epochs > 0) gives it a new classification head")
    return payload


def classifier_head(model: nn.Module, num_classes: int) -> str:
    """Module path of the final classifier: the last Linear or Conv2d, in definition order, with num_classes outputs."""
    head = None
    for path, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_classes
                or isinstance(module, nn.Conv2d) and module.out_channels == num_classes):
            head = path
    if head is None:
        raise CheckpointError(f"{type(model).__name__} has no layer with {num_classes} outputs to serve as its "
                              "classifier")
    return head


def weights_fit(model: nn.Module, state: dict, num_classes: int, *, new_head: bool = False) -> tuple[str, bool]:
    """Whether `state` loads into `model`: (the misfit in words or '', whether the classifier is left new).

    With `new_head`, a file whose final classifier is for another class count (or absent) fits when
    every other weight does; the model's own, freshly initialised classifier then stays.
    Works on the meta device too, so the pre-launch check shares it.
    """
    own = model.state_dict()
    misfit = state_dict_misfit(own, state)
    if not misfit or not new_head:
        return misfit, False
    head = classifier_head(model, num_classes)
    in_head = lambda key: key.startswith(head + ".")  # noqa: E731
    body_misfit = state_dict_misfit({k: v for k, v in own.items() if not in_head(k)},
                                    {k: v for k, v in state.items() if not in_head(k)})
    return (body_misfit, False) if body_misfit else ("", True)


def _load_state(model: nn.Module, state: dict, name: str, arch: str, num_classes: int, in_channels: int,
                new_head: bool) -> bool:
    misfit, replaced = weights_fit(model, state, num_classes, new_head=new_head)
    if misfit:
        raise CheckpointError(
            f"{name} holds the weights of another model than a {arch!r} for {num_classes} classes and {in_channels} "
            f"channels ({misfit}); choose the architecture and options it was saved with, or another file")
    if replaced:
        head = classifier_head(model, num_classes)
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head + ".")}, strict=False)
    else:
        model.load_state_dict(state)
    return replaced


def load_pretrained(path: str | Path, *, arch: str, num_classes: int, in_channels: int, image_size: int,
                    options: dict[str, Any] | None = None, new_head: bool = False, role: str = "teacher",
                    seed: int | None = None) -> Pretrained:
    """Builds `arch` for this dataset and loads the checkpoint into it, explaining any mismatch.

    Args:
        options: model arguments; default the ones the file records.
        new_head: a file for another class count gets a new classifier (transfer learning).
        seed: seeds the build, so a new classifier starts the same on every try.

    Returns:
        The model, whether its classifier is new, and the options it was built with.
    """
    payload = read_compatible(path, arch=arch, num_classes=num_classes, in_channels=in_channels,
                              image_size=image_size, new_head=new_head, role=role)
    options = dict(options if options is not None else payload.get("options") or {})
    with global_rng_lock, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
    replaced = _load_state(model, payload["state_dict"], Path(path).name, arch, num_classes, in_channels, new_head)
    return Pretrained(model, replaced, options)


def load_model_from_checkpoint(path: str | Path, *, arch: str, num_classes: int, in_channels: int,
                               image_size: int, options: dict[str, Any] | None = None) -> nn.Module:
    """Builds `arch` and loads the checkpoint into it whole, explaining any mismatch."""
    return load_pretrained(path, arch=arch, num_classes=num_classes, in_channels=in_channels,
                           image_size=image_size, options=options).model


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
        details.append(f"{_weights(len(missing))} of the model missing from the file, such as {', '.join(missing[:3])}")
    if unexpected:
        details.append(f"{_weights(len(unexpected))} in the file that the model does not have, such as "
                       f"{', '.join(unexpected[:3])}")
    return "; ".join(details)


def _weights(count: int) -> str:
    return f"{count} weight" + ("" if count == 1 else "s")
