"""Wide Residual Networks (Zagoruyko & Komodakis 2016): fewer, wider pre-activation blocks.

WRN-d-k: (d-4)/6 blocks per stage, widths 16k, 32k, 64k, dropout between the two 3x3 convs of a
block (Sec. 2.4). The ImageNet counterpart WRN-50-2 is torchvision's wide_resnet50_2 (a bottleneck
ResNet-50 with the 3x3 layers twice as wide).
"""

from __future__ import annotations

from torch import nn

from models.preact import PreActBlock, PreActResNet
from models.registry import register
from models.resnet import Bottleneck, imagenet_resnet

PAPER = "Zagoruyko & Komodakis, Wide Residual Networks (2016)"


def wide_resnet(depth: int, k: int, num_classes: int, in_channels: int, dropout: float, stem_stride: int = 1) -> nn.Module:
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
    n = (depth - 4) // 6
    return PreActResNet(PreActBlock, [n, n, n], [16 * k, 32 * k, 64 * k], num_classes, in_channels,
                        stem="cifar", stem_width=16, stem_stride=stem_stride, dropout=dropout)


# WRN-d-k on CIFAR, dropout 0.3 between the convs of each block (Table 6); `depth`, `k`, `dropout`
# and `stem_stride` are options, so any WRN-d-k is one of these with other numbers.


@register("Wide ResNet", 2016, PAPER, scale="small")
def wrn28_10(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 28, k: int = 10,
             dropout: float = 0.3, **options) -> nn.Module:
    """WRN-28-10: the paper's best CIFAR network."""
    return wide_resnet(depth, k, num_classes, in_channels, dropout, **options)


@register("Wide ResNet", 2016, PAPER, scale="small")
def wrn40_4(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 40, k: int = 4,
            dropout: float = 0.3, **options) -> nn.Module:
    return wide_resnet(depth, k, num_classes, in_channels, dropout, **options)


@register("Wide ResNet", 2016, PAPER, scale="small")
def wrn16_8(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 16, k: int = 8,
            dropout: float = 0.3, **options) -> nn.Module:
    return wide_resnet(depth, k, num_classes, in_channels, dropout, **options)


@register("Wide ResNet", 2016, PAPER, scale="small")
def wrn16_4(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 16, k: int = 4,
            dropout: float = 0.3, **options) -> nn.Module:
    return wide_resnet(depth, k, num_classes, in_channels, dropout, **options)


@register("Wide ResNet", 2016, PAPER, scale="any")
def wide_resnet50_2(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, variant, width_per_group=128)
