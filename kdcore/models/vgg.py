"""CIFAR-style VGGs with BatchNorm as in RepDistiller: five conv blocks, one 512->classes linear."""
from __future__ import annotations

from torch import nn

from kdcore.models.base import pooled_size, register_model

# Conv widths per block (RepDistiller's cfg 'S' and 'B').
_CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class CifarVGG(nn.Module):
    """Blocks of conv3x3-BN-ReLU separated by 2x2 max-pools, global average pool, linear."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for i, block in enumerate(cfg):
            for c_out in block:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            if i == len(cfg) - 1:
                break
            # RepDistiller pools after blocks 0-2 always and after block 3 only for 64 px
            # inputs; generalised: pool there while the map is still >= 8 px. A pool that
            # would take a 1-pixel map below 1 pixel is skipped, so 8 px inputs work.
            if size >= 2 and (i < 3 or size >= 8):
                layers.append(nn.MaxPool2d(2, 2))
                size = pooled_size(size)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("vgg8")
def vgg8(num_classes=10, in_channels=3, image_size=32):
    """CIFAR-style VGG-8 with BatchNorm (RepDistiller student)"""
    return CifarVGG(_CFGS["vgg8"], num_classes, in_channels, image_size)


@register_model("vgg13")
def vgg13(num_classes=10, in_channels=3, image_size=32):
    """CIFAR-style VGG-13 with BatchNorm (RepDistiller teacher)"""
    return CifarVGG(_CFGS["vgg13"], num_classes, in_channels, image_size)
