"""CIFAR-style ResNets as in RepDistiller (Tian et al. 2020) and mdistiller, the usual KD benchmarks.

Differences from the originals: the stem takes `in_channels`, and the final
AvgPool2d(8) is adaptive so any image size works (identical at 32 px).
"""
from __future__ import annotations

from torch import nn

from kdcore.models.base import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stem and three stages of BasicBlocks; depth = 6n + 2."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth should be 6n+2 (8, 20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _register(name: str, depth: int, num_filters: list[int], doc: str) -> None:
    def factory(num_classes=10, in_channels=3, image_size=32):
        return CifarResNet(depth, num_filters, num_classes, in_channels)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    register_model(name)(factory)


# RepDistiller's configurations: [stem, stage1, stage2, stage3] widths.
_THIN = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]
for _depth in (8, 20, 32, 56):
    _register(f"resnet{_depth}", _depth, _THIN, f"CIFAR-style ResNet, {_depth} layers")
_register("resnet8x4", 8, _X4, "CIFAR-style ResNet, 8 layers, 4x wider (RepDistiller student)")
_register("resnet32x4", 32, _X4, "CIFAR-style ResNet, 32 layers, 4x wider (RepDistiller teacher)")
