"""ResNeXt (Xie, Girshick, Dollar, Tu & He 2017): the bottleneck's 3x3 conv split into C groups
("cardinality") of width d, aggregated by concatenation — form (c) of Fig. 3, a grouped conv.

The blocks are the ResNet's (torchvision's) Bottleneck with `groups` and `base_width`: ResNeXt is a ResNet
parameter, not a new block. CIFAR ResNeXt-29 (Sec. 5.3): a 3x3 stem with 64 filters, three stages
of three bottlenecks whose outputs are 256, 512, 1024 and whose group width doubles per stage.
"""

from __future__ import annotations

from torch import nn

from models.blocks import conv1x1, conv3x3, init_conv_bn
from models.registry import register
from models.resnet import Bottleneck, CifarStages, imagenet_resnet

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


def cifar_resnext(num_classes: int, in_channels: int, cardinality: int, base_width: int, depth: int = 29,
                  stem_width: int = 64, widths: tuple[int, ...] | list[int] = (64, 128, 256),
                  stem_stride: int = 1) -> CifarResNeXt:
    """`widths`: the stages' bottleneck planes (outputs are 4x); `depth` 9n+2. Smaller for small data."""
    if (depth - 2) % 9:
        raise ValueError(f"CIFAR ResNeXt depth must be 9n+2 (11, 20, 29, ...), got {depth}")
    return CifarResNeXt(cardinality, base_width, num_classes, in_channels, depth=depth, stem_width=stem_width,
                        widths=tuple(widths), stem_stride=stem_stride)


@register("ResNeXt", 2017, PAPER, scale="small")
def resnext29_8x64d(num_classes: int, in_channels: int = 3, image_size: int = 32, cardinality: int = 8,
                    base_width: int = 64, **options) -> nn.Module:
    """CIFAR ResNeXt-29 (8x64d), 34.4 M parameters (Table 7)."""
    return cifar_resnext(num_classes, in_channels, cardinality, base_width, **options)


@register("ResNeXt", 2017, PAPER, scale="small")
def resnext29_16x64d(num_classes: int, in_channels: int = 3, image_size: int = 32, cardinality: int = 16,
                     base_width: int = 64, **options) -> nn.Module:
    """CIFAR ResNeXt-29 (16x64d), 68.1 M parameters (Table 7)."""
    return cifar_resnext(num_classes, in_channels, cardinality, base_width, **options)


# ImageNet ResNeXts: torchvision's ResNet with `groups` (cardinality) and `width_per_group`.


@register("ResNeXt", 2017, PAPER, scale="any")
def resnext50_32x4d(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, variant,
                           groups=32, width_per_group=4)


@register("ResNeXt", 2017, PAPER, scale="any")
def resnext101_32x8d(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_resnet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, image_size, variant,
                           groups=32, width_per_group=8)
