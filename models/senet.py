"""Squeeze-and-Excitation networks (Hu, Shen & Sun 2017), in ResNet blocks (Fig. 3).

Squeeze: global average pool to one number per channel. Excitation: FC (C -> C/r) - ReLU -
FC (C/r -> C) - sigmoid, r = 16. The residual branch's channels are scaled by the result before
the shortcut is added. The SE unit is torchvision.ops.SqueezeExcitation (1x1 convs = the FCs).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import SqueezeExcitation

from models.registry import register
from models.resnet import BasicBlock, CifarResNet, imagenet_resnet

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
    """torchvision's bottleneck with an SE unit on its output branch (before the addition)."""

    def __init__(self, inplanes: int, planes: int, *args, **kwargs) -> None:
        super().__init__(inplanes, planes, *args, **kwargs)
        out = planes * self.expansion
        self.se = SqueezeExcitation(out, out // REDUCTION)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


def _cifar(depth: int) -> None:
    def builder(num_classes: int, in_channels: int = 3, image_size: int = 32,
                widths: tuple[int, ...] | list[int] = (16, 32, 64), stem_stride: int = 1,
                reduction: int = REDUCTION) -> nn.Module:
        """`reduction` r of the excitation (Table 5 of the paper compares 2 ... 32)."""
        # Projection (option B) shortcuts where the shape changes, as the common reimplementation.
        block = partial(SEBasicBlock, reduction=reduction)
        return CifarResNet(depth, num_classes, in_channels, block=block, widths=tuple(widths), shortcut="B",
                           stem_stride=stem_stride)

    builder.__doc__ = f"CIFAR SE-ResNet-{depth}: ResNet-{depth} with SE (r=16) in every block."
    register("SENet", 2017, PAPER, scale="small", name=f"se_resnet{depth}")(builder)


for _depth in (20, 56, 110):
    _cifar(_depth)


@register("SENet", 2017, PAPER, scale="any")
def se_resnet50(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_resnet(SEBottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, variant)
