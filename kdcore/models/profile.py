"""Parameter count, memory size, MACs and FLOPs of a model, for comparing teachers and students.

MACs (multiply-accumulates) are what papers, thop and ptflops report as "FLOPs"; torch's
FlopCounterMode counts each multiply-add as 2 operations, so flops = 2 * macs here.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdcore.models.base import create_model


@dataclass(frozen=True)
class ModelProfile:
    params: int  # number of parameters (trainable or not)
    size_mb: float  # bytes of parameters + buffers / 2**20
    flops: int  # per image, as counted by torch.utils.flop_counter (a multiply-add is 2): 2 * macs
    macs: int  # multiply-adds per image (the "FLOPs" of papers, thop and ptflops)


def profile_model(model: nn.Module, in_channels: int, image_size: int) -> ModelProfile:
    """Counts a model's parameters, size, MACs and FLOPs for one (1, C, H, W) image in eval mode."""
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    x = torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()  # BN uses running stats, dropout is off: the FLOPs of inference
    try:
        with torch.no_grad():
            flops = _layer_flops(model, x) if counted_by_layer_hooks(model) else _dispatched_flops(model, x)
    finally:
        model.train(was_training)
    return ModelProfile(params=params, size_mb=nbytes / 2**20, flops=flops, macs=flops // 2)


def _dispatched_flops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode  # imports triton where it is installed: 0.2 s

    # Every op FlopCounterMode counts (matmul, convolution, attention) is multiply-adds, counted as 2 each
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


# Layers whose forward does no multiply-adds, or only those the hook counts. Exact types: a subclass may
# override forward.
_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_FREE = frozenset({
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softmax, nn.Dropout, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
})
# The zoo's own models, whose forwards use only the layers above and elementwise ops; tests/test_models.py holds
# every registered zoo model's count against FlopCounterMode's.
_ZOO_MODULES = ("kdcore.models.cifar_resnet", "kdcore.models.cnn", "kdcore.models.mlp", "kdcore.models.dropout",
                "kdcore.models.vgg", "kdcore.models.wrn")


def counted_by_layer_hooks(model: nn.Module) -> bool:
    """Whether hooks on the model's convs and linears see all its multiply-adds.

    Such a model is counted without FlopCounterMode: the first dispatch mode in a process costs about a second
    of imports (torch._dynamo, sympy), which every `kdcore submit` and worker paid.
    """
    return all(type(m) in _COUNTED or type(m) in _FREE or type(m).__module__ in _ZOO_MODULES
               for m in model.modules())


def _layer_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's count for a model of known layers: 2 per multiply-add of each conv and linear, no bias."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        # A conv's output element takes (in_channels / groups) * kernel multiply-adds, a linear's in_features
        total += 2 * output.numel() * module.weight.shape[1:].numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if type(m) in _COUNTED]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _freeze(value: Any) -> Any:
    # Options from YAML/JSON hold lists; tuples make them usable as a cache key.
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=256)
def _cached_profile(name: str, num_classes: int, in_channels: int, image_size: int, options: tuple) -> ModelProfile:
    return _build_and_profile(name, num_classes, in_channels, image_size, dict(options))


def _build_and_profile(name, num_classes, in_channels, image_size, options: dict) -> ModelProfile:
    model = create_model(name, num_classes, in_channels, image_size, **options)
    return profile_model(model, in_channels, image_size)


def model_profile(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options
) -> ModelProfile:
    """Builds a registered model and profiles it; cached per (name, sizes, options)."""
    key = tuple(sorted((k, _freeze(v)) for k, v in options.items()))
    try:
        hash(key)
    except TypeError:  # e.g. a dict-valued option: still works, just uncached
        return _build_and_profile(name, num_classes, in_channels, image_size, options)
    return _cached_profile(name, num_classes, in_channels, image_size, key)


model_profile.cache_clear = _cached_profile.cache_clear  # e.g. after re-registering a name
