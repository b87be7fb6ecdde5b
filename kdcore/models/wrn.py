"""Wide ResNets (Zagoruyko & Komodakis 2016) as in RepDistiller; adaptive final pooling."""
from __future__ import annotations

import math

from torch import nn

from kdcore.models.base import register_model
from kdcore.models.dropout import Dropout


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv twice, 1x1 conv shortcut when widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.dropout = Dropout(drop_rate)
        self.equal_in_out = in_planes == out_planes
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        # As in the reference code, a projecting shortcut sees the pre-activated input.
        shortcut = x if self.equal_in_out else self.shortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        out = self.dropout(out)
        return shortcut + self.conv2(out)


class WideResNet(nn.Module):
    """WRN-depth-widen; depth = 6n + 4."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth should be 6n+4 (16, 28, 40), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.block1 = self._stage(n, channels[0], channels[1], 1, dropout)
        self.block2 = self._stage(n, channels[1], channels[2], 2, dropout)
        self.block3 = self._stage(n, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    @staticmethod
    def _stage(n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> nn.Sequential:
        return nn.Sequential(
            *(WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
              for i in range(n))
        )

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("wrn_16_2")
def wrn_16_2(num_classes=10, in_channels=3, image_size=32, *, dropout: float = 0.0):
    """Wide ResNet, 16 layers, widen factor 2"""
    return WideResNet(16, 2, num_classes, in_channels, dropout)


@register_model("wrn_40_2")
def wrn_40_2(num_classes=10, in_channels=3, image_size=32, *, dropout: float = 0.0):
    """Wide ResNet, 40 layers, widen factor 2"""
    return WideResNet(40, 2, num_classes, in_channels, dropout)
