"""Fully connected nets: Hinton et al. (2015) distil a 1200-1200 MLP into an 800-800 one on MNIST."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from kdcore.models.base import register_model
from kdcore.models.dropout import Dropout


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU(-Dropout) per hidden size, then a Linear to the classes."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.0,
                 input_dropout: float = 0.0):
        hidden = list(hidden)
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:  # Hinton et al.'s teachers dropped a fifth of the pixels too
            layers.append(Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def _mlp(num_classes: int, in_channels: int, image_size: int, hidden: Sequence[int], dropout: float,
         input_dropout: float = 0.0) -> MLP:
    return MLP(in_channels * image_size * image_size, num_classes, hidden, dropout, input_dropout)


@register_model("mlp")
def mlp(num_classes=10, in_channels=3, image_size=32, *, hidden: Sequence[int] = (512, 256), dropout: float = 0.0,
        input_dropout: float = 0.0):
    """MLP on flattened pixels, hidden sizes from the `hidden` option (default 512-256)"""
    return _mlp(num_classes, in_channels, image_size, hidden, dropout, input_dropout)


@register_model("mlp_1200x2")
def mlp_1200x2(num_classes=10, in_channels=3, image_size=32, *, dropout: float = 0.2):
    """MLP 1200-1200 with dropout, Hinton et al.'s MNIST teacher"""
    return _mlp(num_classes, in_channels, image_size, (1200, 1200), dropout)


@register_model("mlp_800x2")
def mlp_800x2(num_classes=10, in_channels=3, image_size=32, *, dropout: float = 0.0):
    """MLP 800-800, Hinton et al.'s MNIST student"""
    return _mlp(num_classes, in_channels, image_size, (800, 800), dropout)


@register_model("mlp_tiny")
def mlp_tiny(num_classes=10, in_channels=3, image_size=32, *, dropout: float = 0.0):
    """MLP with one 64-unit hidden layer, a very cheap student"""
    return _mlp(num_classes, in_channels, image_size, (64,), dropout)
