"""MobileNet v1 (Howard et al. 2017): a standard 3x3 conv, then 13 depthwise separable convs
(3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU), global pool, FC (Table 1).

A depthwise separable conv costs 1/N + 1/9 of a full 3x3 conv. The width multiplier alpha thins
every layer (cost ~ alpha^2); the resolution multiplier rho is simply a smaller input
(`image_size`). At small scale the first conv has stride 1, so a 32x32 image ends at 2x2.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops import Conv2dNormActivation

from models.blocks import is_small
from models.classifier import SequentialHead
from models.registry import register

PAPER = "Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications (2017)"

# (output channels, stride) of the 13 depthwise separable layers, Table 1.
LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class DepthwiseSeparableConv(nn.Sequential):
    """3x3 depthwise conv (one filter per channel) -> BN-ReLU -> 1x1 pointwise conv -> BN-ReLU (Fig. 3)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            Conv2dNormActivation(in_channels, in_channels, 3, stride, groups=in_channels),
            Conv2dNormActivation(in_channels, out_channels, 1),
        )


class MobileNetV1(SequentialHead):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, alpha: float = 1.0, small: bool = False,
                 dropout: float = 0.0, stem_stride: int | None = None) -> None:
        super().__init__()
        c = max(8, int(32 * alpha))
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, c, 3, stem_stride or (1 if small else 2))]
        for out, stride in LAYERS:
            out = max(8, int(out * alpha))
            layers.append(DepthwiseSeparableConv(c, out, stride))
            c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


@register("MobileNet v1", 2017, PAPER, scale="any")
def mobilenet_v1(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
                 alpha: float = 1.0, dropout: float = 0.0, stem_stride: int | None = None) -> nn.Module:
    """1.0-MobileNet-224: 4.2 M parameters (Table 8); `alpha` in {1, 0.75, 0.5, 0.25}."""
    return MobileNetV1(num_classes, in_channels, alpha, small=is_small(image_size, variant), dropout=dropout,
                       stem_stride=stem_stride)
