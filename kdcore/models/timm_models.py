"""timm architectures by name: `timm/<name>` builds `timm.create_model(name, ...)`, adapted to small images.

Up to SMALL_INPUT px a strided stem conv (timm's `first_conv`) becomes a stride-1 3x3, as the zoo's
torchvision models do; a ViT-style patch embedding is kept and the model is built for the run's image
size instead. What still does not fit the image is refused before any work, with the smallest size that fits.
timm is imported on first use: listing the zoo does not pay for it.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path

import torch
from torch import nn

from kdcore.models.base import MODELS
from kdcore.models.tv import SMALL_INPUT, adapt_stem

PREFIX = "timm/"
_FIXED = ("num_classes", "in_chans", "pretrained", "features_only", "pretrained_cfg_overlay")
_PROBE_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 224, 256, 384, 512)


class PretrainedMismatch(ValueError):
    """A pretrained file whose keys or shapes do not fit the architecture as kdcore builds it."""


@functools.lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


@functools.lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    return frozenset(timm_names())


def picker_names() -> list[str]:
    """`timm/<name>` for every timm model, for a searchable picker after the zoo's names."""
    return [PREFIX + name for name in timm_names()]


def close_names(name: str, n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, timm_names(), n=n, cutoff=0.5)


def _build(name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool, options: dict):
    import timm

    options = dict(options)
    img_size = options.pop("img_size", image_size)
    kwargs = dict(num_classes=num_classes, in_chans=in_channels, pretrained=pretrained, **options)
    try:  # ViT-style models are built for the image size; the rest do not take img_size
        model = timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        model = timm.create_model(name, **kwargs)
    stem = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if image_size <= SMALL_INPUT and isinstance(stem, str) and not stem.startswith("patch_embed"):
        try:
            conv = model.get_submodule(stem)
        except AttributeError:
            conv = None
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            adapt_stem(model, stem, in_channels, small=True)
    return model


def _fits(model: nn.Module, in_channels: int, size: int) -> bool:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=next(model.parameters()).device))
        return True
    except Exception:  # noqa: BLE001 - any failure means "does not take this size"
        return False
    finally:
        model.train(was_training)


def _smallest_size(name: str, in_channels: int, image_size: int, options: dict) -> int | None:
    # Probed on the meta device: shapes are followed, nothing is allocated.
    for size in (s for s in _PROBE_SIZES if s > image_size):
        try:
            with torch.device("meta"):
                model = _build(name, 2, in_channels, size, False, options)
            if _fits(model, in_channels, size):
                return size
        except Exception:  # noqa: BLE001
            continue
    return None


def _read_state(path: str | Path) -> dict:
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedMismatch(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def pretrained_mismatch(model: nn.Module, state: dict, path: str | Path, arch: str) -> str | None:
    """What keeps the state dict from fitting `model` (a meta-device model will do), or None."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    resized = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or resized):
        return None
    parts = [f"{label}: {', '.join(keys[:6])}{' …' if len(keys) > 6 else ''} ({len(keys)})"
             for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("keys of another shape", resized)) if keys]
    return f"{path} does not fit {arch}: " + "; ".join(parts)


def check_pretrained_file(model: nn.Module, path: str | Path, arch: str) -> dict:
    """The file's state dict; PretrainedMismatch naming its missing and unexpected keys when it does not fit."""
    try:
        state = _read_state(path)
    except (OSError, RuntimeError) as err:
        raise PretrainedMismatch(f"{path}: cannot be read as a state dict ({str(err).splitlines()[0]})") from None
    problem = pretrained_mismatch(model, state, path, arch)
    if problem:
        raise PretrainedMismatch(problem)
    return state


def load_pretrained_file(model: nn.Module, path: str | Path, arch: str) -> nn.Module:
    """Loads a state dict file into `model`; a file that does not fit names its missing and unexpected keys."""
    model.load_state_dict(check_pretrained_file(model, path, arch))
    return model


def _resolve(name: str):
    if name not in _known():
        close = close_names(name)
        hint = f"; closest: {', '.join(close)}" if close else "; see timm.list_models()"
        raise KeyError(f"unknown timm model {name!r}{hint}")

    def factory(num_classes=10, in_channels=3, image_size=32, pretrained=None, **options):
        taken = sorted(set(options) & set(_FIXED))
        if taken:
            raise TypeError(f"model {PREFIX + name!r}: option(s) {', '.join(map(repr, taken))} are set by kdcore")
        model = _build(name, num_classes, in_channels, image_size, pretrained is True, options)
        if not _fits(model, in_channels, image_size):
            smallest = _smallest_size(name, in_channels, image_size, options)
            need = f"it needs images of at least {smallest} px" if smallest else "no size up to 512 px fits it"
            raise ValueError(f"{PREFIX}{name} does not take {image_size} px images: {need}")
        if isinstance(pretrained, (str, Path)):
            load_pretrained_file(model, pretrained, PREFIX + name)
        return model

    factory.__name__ = factory.__qualname__ = PREFIX + name
    factory.__doc__ = f"timm {name}, small-input stem up to {SMALL_INPUT} px"
    return factory


MODELS.add_family(PREFIX, _resolve)
