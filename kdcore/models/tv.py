"""torchvision ImageNet architectures, built untrained and adapted to any channel count and small images.

Below SMALL_INPUT px the downsampling stem (strided conv + max-pool) would
throw away most of a 28-32 px image before the first block, so it becomes a
stride-1 3x3 conv without the max-pool, the usual CIFAR adaptation.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from kdcore.models.base import pooled_size, register_model

SMALL_INPUT = 64  # image_size at or below which the small-input stem is used

Init = Optional[Callable[[torch.Tensor], object]]


def _kaiming(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def _trunc_normal(weight: torch.Tensor) -> None:  # GoogLeNet's own scheme
    nn.init.trunc_normal_(weight, mean=0.0, std=0.01, a=-2, b=2)


def adapt_stem(
    model: nn.Module,
    conv: str,
    in_channels: int,
    small: bool,
    pool: str | None = None,
    init: Init = _kaiming,
) -> nn.Module:
    """Replaces the first conv (dotted path `conv`) so it takes `in_channels`.

    With `small`, the new conv is a stride-1 3x3 and the stem max-pool (path
    `pool`) becomes an Identity. `init` re-initialises the new weight in the
    model's own scheme (None keeps PyTorch's default). Returns the model.
    """
    old = model.get_submodule(conv)
    if small:
        geometry = dict(kernel_size=3, stride=1, padding=1)
    else:
        geometry = dict(kernel_size=old.kernel_size, stride=old.stride, padding=old.padding)
    changes_shape = small and (old.kernel_size, old.stride) != ((3, 3), (1, 1))
    if in_channels != old.in_channels or changes_shape:
        new = nn.Conv2d(in_channels, old.out_channels, bias=old.bias is not None, **geometry)
        if init is not None:
            init(new.weight)
            if new.bias is not None:
                nn.init.zeros_(new.bias)
        model.set_submodule(conv, new)
    if small and pool is not None:
        model.set_submodule(pool, nn.Identity())
    return model


def _skip_tiny_pools(features: nn.Sequential, image_size: int) -> None:
    # Only max-pools change the size in VGG features (convs are 3x3, padding 1).
    size = image_size
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            k, s = layer.kernel_size, layer.stride
            if size < k:
                features[i] = nn.Identity()
            else:
                size = pooled_size(size, k, s, layer.padding, layer.ceil_mode)


def _adapt_vgg(model: nn.Module, num_classes: int, image_size: int) -> None:
    _skip_tiny_pools(model.features, image_size)
    if image_size <= SMALL_INPUT:
        # The 25088-4096-4096 head suits 7x7 ImageNet maps; on small images it
        # would be ~120M parameters of mostly repeated pixels.
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(512, num_classes)
        nn.init.normal_(model.classifier.weight, 0, 0.01)
        nn.init.zeros_(model.classifier.bias)


class _Spec(NamedTuple):
    builder: str  # torchvision.models' constructor, imported on first build: torchvision takes seconds to load
    conv: str  # dotted path of the stem conv
    pool: Optional[str]  # dotted path of the stem max-pool, if any
    init: Init  # the architecture's own init for the replaced stem conv
    doc: str
    fixed: dict = {}  # builder kwargs kdcore sets and users may not
    post: Optional[Callable[[nn.Module, int, int], None]] = None  # (model, num_classes, image_size)


_SPECS = {
    "resnet18": _Spec(
        "resnet18", "conv1", "maxpool", _kaiming, "torchvision ResNet-18, small-input stem up to 64 px"
    ),
    "resnet50": _Spec(
        "resnet50", "conv1", "maxpool", _kaiming, "torchvision ResNet-50, small-input stem up to 64 px"
    ),
    "vgg11_bn": _Spec(
        "vgg11_bn", "features.0", None, _kaiming, "torchvision VGG-11 with BatchNorm, compact head up to 64 px",
        post=_adapt_vgg,
    ),
    "googlenet": _Spec(
        "googlenet", "conv1.conv", "maxpool1", _trunc_normal,
        "torchvision GoogLeNet without auxiliary heads, small-input stem up to 64 px",
        # transform_input assumes 3-channel ImageNet-normalised input; aux heads
        # would make the training-mode output a tuple.
        fixed=dict(aux_logits=False, init_weights=True, transform_input=False),
    ),
    "mobilenet_v2": _Spec(
        "mobilenet_v2", "features.0.0", None, _kaiming, "torchvision MobileNetV2, stride-1 stem up to 64 px"
    ),
    "mobilenet_v3_small": _Spec(
        "mobilenet_v3_small", "features.0.0", None, _kaiming,
        "torchvision MobileNetV3-Small, stride-1 stem up to 64 px",
    ),
    # ShuffleNetV2 keeps PyTorch's default init, so the new stem does too.
    "shufflenet_v2_x1_0": _Spec(
        "shufflenet_v2_x1_0", "conv1.0", "maxpool", None,
        "torchvision ShuffleNetV2 1.0x, small-input stem up to 64 px",
    ),
}

_ALWAYS_FIXED = ("weights", "progress", "num_classes")


def _register(name: str, spec: _Spec) -> None:
    def factory(num_classes=10, in_channels=3, image_size=32, **options):
        # Other options go to the torchvision constructor, which rejects unknown ones.
        taken = sorted(set(options) & (set(_ALWAYS_FIXED) | set(spec.fixed)))
        if taken:
            raise TypeError(f"model {name!r}: option(s) {', '.join(map(repr, taken))} are fixed by kdcore")
        from torchvision import models

        model = getattr(models, spec.builder)(weights=None, num_classes=num_classes, **spec.fixed, **options)
        adapt_stem(model, spec.conv, in_channels, image_size <= SMALL_INPUT, spec.pool, spec.init)
        if spec.post is not None:
            spec.post(model, num_classes, image_size)
        return model

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = spec.doc
    register_model(name)(factory)


for _name, _spec in _SPECS.items():
    _register(_name, _spec)
