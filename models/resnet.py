"""ResNet (He, Zhang, Ren & Sun 2015): residual learning, y = F(x) + x.

ImageNet ResNet-18/34/50/101/152 are torchvision's (basic and bottleneck blocks, projection
shortcuts, option B; the bottleneck's residual branch is a method, as the CIFAR block's); at small inputs their stem becomes the CIFAR one (3x3 conv, no max pool).
The CIFAR networks of Sec. 4.2 are written here: 6n+2 layers, 16-32-64 channels, option A
(parameter-free) shortcuts, and the matching *plain* networks without shortcuts for the
degradation experiment (Fig. 6). Stochastic depth and SE reuse these classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv
from torchvision.ops import StochasticDepth

from models.blocks import ShortcutA, conv1x1, conv3x3, init_conv_bn, is_small, replace_first_conv
from models.classifier import Classifier
from models.registry import register

PAPER = "He et al., Deep Residual Learning for Image Recognition (2015)"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, the shortcut added before the last ReLU (Fig. 2).

    `shortcut`: "A" zero-pads and subsamples (CIFAR, Sec. 4.2), "B" projects with a 1x1 conv where
    the shape changes, None gives the plain block. `drop_prob` > 0 drops the whole residual
    branch for the whole mini-batch in training (stochastic depth, Huang et al. 2016); at test
    time the branch is always used (torchvision's StochasticDepth rescales in training instead
    of at test time, which is the same in expectation).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "A",
                 drop_prob: float = 0.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module | None
        if shortcut is None:
            self.shortcut = None
        elif stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_planes, planes, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))
        else:
            raise ValueError(f"shortcut must be 'A', 'B' or None, got {shortcut!r}")
        self.stochastic_depth = StochasticDepth(drop_prob, "batch") if drop_prob > 0 else nn.Identity()

    def residual(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.stochastic_depth(self.residual(x))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(tv.Bottleneck):
    """torchvision's bottleneck (1x1 reduce, 3x3, 1x1 expand x4; the stride on the 3x3, "v1.5"), its
    residual branch F(x) a method of its own, as `BasicBlock.residual`: SE, stochastic depth and
    the deformable convs change the branch, never the block."""

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class CifarStages(Classifier):
    """The CIFAR layout of the ResNet family (He et al. 2015, Sec. 4.2): a 3x3 conv stem, three
    stages `layer1..3` at falling resolution, global average pooling, `fc`. Subclasses build them."""

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class CifarResNet(CifarStages):
    """conv3x3(16) -> 3 stages of n blocks at 32x32, 16x16, 8x8 with 16, 32, 64 filters -> global
    average pool -> fc. Depth 6n+2.

    `widths` thins or widens the stages. `stem_stride=2` halves the resolution in the stem
    (for small images upsampled to 32x32, e.g. the embedded 8x8 digits: a quarter of the compute).
    `final_survival` < 1 turns on stochastic depth with the linear decay rule p_l = 1 - l/L (1 - p_L)
    over the L residual blocks. `shortcut=None` gives the plain network of Fig. 6.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 block: Callable[..., nn.Module] = BasicBlock, widths: Sequence[int] = (16, 32, 64),
                 shortcut: str | None = "A", final_survival: float = 1.0, stem_stride: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        total = 3 * n
        self.conv1 = conv3x3(in_channels, widths[0], stem_stride)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes, index = [], widths[0], 0
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(n):
                index += 1
                stride = 2 if stage > 0 and i == 0 else 1
                drop = index / total * (1.0 - final_survival)
                blocks.append(block(in_planes, planes, stride, shortcut=shortcut, drop_prob=drop))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)


class ResNet(Classifier, tv.ResNet):
    """torchvision's ResNet (any block: ResNeXt, SE, stochastic and deformable blocks plug in), seen
    through the zoo's faces: features = stem and the four stages, head = average pool and `fc`."""

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def adapt_stem(model: ResNet, in_channels: int, small: bool) -> ResNet:
    """torchvision ResNet -> `in_channels` inputs; at small scale the CIFAR stem: a 3x3 stride-1
    conv and no max pool, so a 32x32 image reaches the last stage at 4x4 instead of 1x1."""
    if small:
        model.conv1 = replace_first_conv(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = replace_first_conv(model.conv1, in_channels)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def imagenet_resnet(block: type[nn.Module], layers: list[int], num_classes: int, in_channels: int, image_size: int,
                    variant: str | None = None, **kwargs) -> ResNet:
    """torchvision's ResNet with any block; the CIFAR stem below 128 px (or with variant="small")."""
    model = ResNet(block, layers, num_classes=num_classes, **kwargs)
    return adapt_stem(model, in_channels, is_small(image_size, variant))


# ImageNet ResNets (Table 1), torchvision's; the CIFAR stem below 128 px.


@register("ResNet", 2015, PAPER, scale="any")
def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return imagenet_resnet(tv.BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size, variant, **options)


@register("ResNet", 2015, PAPER, scale="any")
def resnet34(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return imagenet_resnet(tv.BasicBlock, [3, 4, 6, 3], num_classes, in_channels, image_size, variant, **options)


@register("ResNet", 2015, PAPER, scale="any")
def resnet50(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, variant, **options)


@register("ResNet", 2015, PAPER, scale="any")
def resnet101(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              **options) -> nn.Module:
    return imagenet_resnet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, image_size, variant, **options)


@register("ResNet", 2015, PAPER, scale="any")
def resnet152(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              **options) -> nn.Module:
    return imagenet_resnet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels, image_size, variant, **options)


# CIFAR ResNets (Sec. 4.2, Table 6): 6n+2 layers, option-A shortcuts; options: `widths`, `stem_stride`.


@register("ResNet", 2015, PAPER, scale="small")
def resnet20(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels, **options)


@register("ResNet", 2015, PAPER, scale="small")
def resnet32(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(32, num_classes, in_channels, **options)


@register("ResNet", 2015, PAPER, scale="small")
def resnet44(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(44, num_classes, in_channels, **options)


@register("ResNet", 2015, PAPER, scale="small")
def resnet56(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels, **options)


@register("ResNet", 2015, PAPER, scale="small")
def resnet110(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels, **options)


# The plain CIFAR networks of the degradation experiment (Fig. 6): the same layers, no shortcuts.


@register("ResNet", 2015, PAPER, scale="small")
def plain20(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels, shortcut=None, **options)


@register("ResNet", 2015, PAPER, scale="small")
def plain32(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(32, num_classes, in_channels, shortcut=None, **options)


@register("ResNet", 2015, PAPER, scale="small")
def plain44(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(44, num_classes, in_channels, shortcut=None, **options)


@register("ResNet", 2015, PAPER, scale="small")
def plain56(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels, shortcut=None, **options)


@register("ResNet", 2015, PAPER, scale="small")
def plain110(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels, shortcut=None, **options)
