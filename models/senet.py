"""Squeeze-and-Excitation networks (Hu, Shen & Sun 2017), in ResNet blocks (Fig. 3).

Squeeze: global average pool to one number per channel. Excitation: FC (C -> C/r) - ReLU -
FC (C/r -> C) - sigmoid, r = 16. The residual branch's channels are scaled by the result before
the shortcut is added. The SE unit is torchvision.ops.SqueezeExcitation (1x1 convs = the FCs).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torchvision.ops import SqueezeExcitation

from models.registry import register
from models.resnet import BasicBlock, Bottleneck, CifarResNet, imagenet_resnet

PAPER = "Hu, Shen & Sun, Squeeze-and-Excitation Networks (2017)"
REDUCTION = 16


class SEBasicBlock(BasicBlock):
    """CIFAR basic block whose residual branch is recalibrated by an SE unit."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, reduction: int = REDUCTION, **kwargs) -> None:
        super().__init__(in_planes, planes, stride, **kwargs)
        self.se = SqueezeExcitation(planes, max(1, planes // reduction))

    def residual(self, x: Tensor) -> Tensor:
        return self.se(super().residual(x))


class SEBottleneck(Bottleneck):
    """Bottleneck whose residual branch is recalibrated by an SE unit (before the addition)."""

    def __init__(self, inplanes: int, planes: int, *args, **kwargs) -> None:
        super().__init__(inplanes, planes, *args, **kwargs)
        out = planes * self.expansion
        self.se = SqueezeExcitation(out, out // REDUCTION)

    def residual(self, x: Tensor) -> Tensor:
        return self.se(super().residual(x))


def cifar_se_resnet(depth: int, num_classes: int, in_channels: int, reduction: int = REDUCTION,
                    **options) -> CifarResNet:
    """CIFAR ResNet-`depth` with SE in every block; `reduction` r of the excitation (Table 5 of the
    paper compares 2 ... 32). Projection (option B) shortcuts where the shape changes, as the common
    reimplementation. Options: `widths`, `stem_stride`."""
    block = partial(SEBasicBlock, reduction=reduction)
    return CifarResNet(depth, num_classes, in_channels, block=block, shortcut="B", **options)


@register("SENet", 2017, PAPER, scale="small")
def se_resnet20(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return cifar_se_resnet(20, num_classes, in_channels, **options)


@register("SENet", 2017, PAPER, scale="small")
def se_resnet56(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return cifar_se_resnet(56, num_classes, in_channels, **options)


@register("SENet", 2017, PAPER, scale="small")
def se_resnet110(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return cifar_se_resnet(110, num_classes, in_channels, **options)


@register("SENet", 2017, PAPER, scale="any")
def se_resnet50(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_resnet(SEBottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, variant)
