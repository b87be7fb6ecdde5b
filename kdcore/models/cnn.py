"""Small plain conv nets: quick teachers and students for digits/MNIST-sized data."""
from __future__ import annotations

from torch import nn

from kdcore.models.base import pooled_size, register_model


class SmallCNN(nn.Module):
    """conv(w)-BN-ReLU-pool, conv(2w)-BN-ReLU-pool, adaptive 2x2 average pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 32):
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        layers: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for c_out in (width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            # A 2x2 max-pool of a 1-pixel map fails; skip it for tiny inputs.
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size = pooled_size(size)
            c_in = c_out
        self.features = nn.Sequential(*layers)
        # 2x2 rather than global pooling keeps a little layout, which matters with only two convs.
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(4 * c_in, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("small_cnn")
def small_cnn(num_classes=10, in_channels=3, image_size=32, *, width: int = 32):
    """Small CNN, two conv layers (width 32-64 by default)"""
    return SmallCNN(num_classes, in_channels, image_size, width)


@register_model("tiny_cnn")
def tiny_cnn(num_classes=10, in_channels=3, image_size=32):
    """Tiny CNN, two conv layers of width 8-16, a very cheap student"""
    return SmallCNN(num_classes, in_channels, image_size, 8)
