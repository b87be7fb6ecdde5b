"""Where a zoo model's stages end: the default layers feature-based distillation reads.

A stage is a run of layers at one spatial resolution; its output is what FitNets'
hints and attention transfer compare between teacher and student.
"""
from __future__ import annotations

import torch
from torch import nn

# Families whose stages are named children.
_NAMED_STAGES = {
    "CifarResNet": ("layer1", "layer2", "layer3"),
    "ResNet": ("layer1", "layer2", "layer3", "layer4"),
    "WideResNet": ("block1", "block2", "block3"),
    "ShuffleNetV2": ("stage2", "stage3", "stage4"),
    "GoogLeNet": ("inception3b", "inception4e", "inception5b"),
}


def _timm_stages(model: nn.Module) -> list[str]:
    """A timm model's stages as its own `feature_info` names them (the modules features_only would return)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not all(isinstance(i, dict) and "module" in i for i in info):
        return []
    paths = [i["module"] for i in info]
    try:
        for path in paths:
            model.get_submodule(path)
    except AttributeError:
        return []
    return paths


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


@torch.no_grad()
def _sequential_stages(prefix: str, layers: nn.Sequential, sample: torch.Tensor) -> list[str]:
    """The last layer of each run of equal resolution; a run of parameter-free layers (a lone pool) ends the one before."""
    x, ends, last_size = sample, [], None
    closed = False  # a parameter-free layer changed the resolution: the stage ended with it
    for name, layer in layers.named_children():
        x = layer(x)
        size = tuple(x.shape[2:]) if x.dim() == 4 else None
        path = f"{prefix}.{name}" if prefix else name
        if not ends or (_has_params(layer) and (closed or size != last_size)):
            ends.append(path)
            closed = False
        else:
            ends[-1] = path
            closed = closed or size != last_size
        last_size = size
    return ends


def feature_stages(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Module paths of the model's stage outputs, shallow to deep.

    Args:
        model: a zoo model (any module with named stages, a `features` Sequential, or an MLP).
        sample: a batch of inputs of the model's shape, used to follow the resolution.

    Raises:
        ValueError: for a model whose stages are not known; name the layers by path instead.
    """
    timm_stages = _timm_stages(model)  # first: timm's ResNet shares torchvision's class name
    if timm_stages:
        return timm_stages
    kind = type(model).__name__
    if kind in _NAMED_STAGES:
        return list(_NAMED_STAGES[kind])
    was_training = model.training
    model.eval()
    try:
        features = getattr(model, "features", None)
        if isinstance(features, nn.Sequential):
            return _sequential_stages("features", features, sample)
        if isinstance(model, nn.Sequential):  # MLP: each hidden layer's activation
            return [name for name, layer in model.named_children() if isinstance(layer, nn.ReLU)]
    finally:
        model.train(was_training)
    raise ValueError(f"no default feature layers are known for {kind}; name the layers by module path")


def resolve_layer(model: nn.Module, spec: str, sample: torch.Tensor) -> str:
    """A layer option's value as a module path: 'first', 'middle', 'last', 'stage:N' (0-based, negative from the end) or a path."""
    if spec in ("first", "middle", "last") or spec.startswith("stage:"):
        stages = feature_stages(model, sample)
        if spec == "first":
            return stages[0]
        if spec == "last":
            return stages[-1]
        if spec == "middle":
            return stages[(len(stages) - 1) // 2]
        try:
            return stages[int(spec.split(":", 1)[1])]
        except (ValueError, IndexError):
            raise ValueError(f"{spec!r}: {type(model).__name__} has stages 0..{len(stages) - 1} ({', '.join(stages)})") from None
    try:
        model.get_submodule(spec)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no layer {spec!r}; stages are {', '.join(feature_stages(model, sample))}") from None
    return spec
