"""ResNeXt (Xie, Girshick, Dollar, Tu & He 2017): the bottleneck's 3x3 conv split into C groups
("cardinality") of width d, aggregated by concatenation — form (c) of Fig. 3, a grouped conv.

The blocks are torchvision's Bottleneck with `groups` and `base_width`: ResNeXt is a ResNet
parameter, not a new block. CIFAR ResNeXt-29 (Sec. 5.3): a 3x3 stem with 64 filters, three stages
of three bottlenecks whose outputs are 256, 512, 1024 and whose group width doubles per stage.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck

from models.blocks import conv1x1, conv3x3, init_conv_bn
from models.registry import register
from models.resnet import CifarStages, imagenet_resnet

PAPER = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks (2017)"


class CifarResNeXt(CifarStages):
    def __init__(self, cardinality: int, base_width: int, num_classes: int, in_channels: int = 3,
                 depth: int = 29, stem_width: int = 64, widths: tuple[int, ...] = (64, 128, 256),
                 stem_stride: int = 1) -> None:
        super().__init__()
        n = (depth - 2) // 9
        self.conv1 = conv3x3(in_channels, stem_width, stem_stride)
        self.bn1 = nn.BatchNorm2d(stem_width)
        stages, in_planes = [], stem_width
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                out = planes * Bottleneck.expansion
                down = None
                if stride != 1 or in_planes != out:  # projection shortcut (option B)
                    down = nn.Sequential(conv1x1(in_planes, out, stride), nn.BatchNorm2d(out))
                # width = planes * base_width/64 * cardinality: 64d x C at stage 1, doubling after
                blocks.append(Bottleneck(in_planes, planes, stride, down, groups=cardinality, base_width=base_width))
                in_planes = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)


def _cifar(cardinality: int, width: int) -> None:
    def builder(num_classes: int, in_channels: int = 3, image_size: int = 32, cardinality: int = cardinality,
                base_width: int = width, stem_width: int = 64,
                widths: tuple[int, ...] | list[int] = (64, 128, 256), stem_stride: int = 1,
                depth: int = 29) -> nn.Module:
        """`widths`: the stages' bottleneck planes (outputs are 4x); `depth` 9n+2. Smaller for small data."""
        if (depth - 2) % 9:
            raise ValueError(f"CIFAR ResNeXt depth must be 9n+2 (11, 20, 29, ...), got {depth}")
        return CifarResNeXt(cardinality, base_width, num_classes, in_channels, depth=depth, stem_width=stem_width,
                            widths=tuple(widths), stem_stride=stem_stride)

    builder.__doc__ = f"CIFAR ResNeXt-29 ({cardinality}x{width}d)."
    register("ResNeXt", 2017, PAPER, scale="small", name=f"resnext29_{cardinality}x{width}d")(builder)


_cifar(8, 64)
_cifar(16, 64)


def _imagenet(name: str, layers: list[int], groups: int, width: int) -> None:
    def builder(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
        return imagenet_resnet(Bottleneck, layers, num_classes, in_channels, image_size, variant,
                               groups=groups, width_per_group=width)

    builder.__doc__ = f"ResNeXt {name}: torchvision's ResNet with groups={groups}, width_per_group={width}."
    register("ResNeXt", 2017, PAPER, scale="any", name=name)(builder)


_imagenet("resnext50_32x4d", [3, 4, 6, 3], 32, 4)
_imagenet("resnext101_32x8d", [3, 4, 23, 3], 32, 8)
