"""Pre-activation ResNet (He, Zhang, Ren & Sun 2016, "Identity Mappings in Deep Residual Networks").

BN and ReLU move before each convolution (Fig. 4e), so the shortcut path is a clean identity from
any block to any later one; the network ends with a final BN-ReLU. PreAct-18 uses basic blocks
(ImageNet stem at 224, CIFAR stem at small scale); CIFAR PreAct-164 uses bottlenecks (Table 3).
Wide ResNets reuse `PreActBlock` with dropout between its convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import conv1x1, conv3x3, init_conv_bn, is_small
from models.classifier import Classifier
from models.registry import register

PAPER = "He et al., Identity Mappings in Deep Residual Networks (2016)"


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut. Where the shape changes, the shortcut is a 1x1
    conv on the pre-activated input (Sec. 4.1). `dropout` sits between the two convs (WRN)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        out = planes * self.expansion
        self.shortcut = conv1x1(in_planes, out, stride) if stride != 1 or in_planes != out else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        identity = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + identity


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1(x4) + shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.shortcut = conv1x1(in_planes, out, stride) if stride != 1 or in_planes != out else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        identity = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + identity


class PreActResNet(Classifier):
    """Stem -> stages of pre-activation blocks -> BN-ReLU -> global pool -> fc.

    `stem`: "cifar" (3x3 conv) or "imagenet" (7x7/2 conv + 3x3/2 max pool, as ResNet).
    `block_kwargs` go to every block (WRN's dropout). `stem_stride` strides the CIFAR stem.
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int], widths: Sequence[int], num_classes: int,
                 in_channels: int = 3, stem: str = "cifar", stem_width: int | None = None, stem_stride: int = 1,
                 **block_kwargs) -> None:
        super().__init__()
        stem_width = stem_width or widths[0]
        if stem == "cifar":
            self.stem = conv3x3(in_channels, stem_width, stem_stride)
        else:
            # the first block pre-activates, so the stem is conv (+BN-ReLU before pooling, as ResNet)
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, in_planes = [], stem_width
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, 2 if i > 0 and j == 0 else 1, **block_kwargs))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)  # the last block's output is not yet activated
        self.fc = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.stages(self.stem(x))))


@register("Pre-activation ResNet", 2016, PAPER, scale="any")
def preact_resnet18(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
                    width: float = 1.0, stem_stride: int = 1) -> nn.Module:
    widths = [int(w * width) for w in (64, 128, 256, 512)]
    stem = "cifar" if is_small(image_size, variant) else "imagenet"
    return PreActResNet(PreActBlock, [2, 2, 2, 2], widths, num_classes, in_channels, stem=stem, stem_stride=stem_stride)


def cifar_preact_bottleneck(depth: int, num_classes: int, in_channels: int, stem_stride: int = 1) -> PreActResNet:
    """9n+2 layers: three stages of n three-layer bottlenecks, 16-32-64 (x4 out), Table 3."""
    if (depth - 2) % 9:
        raise ValueError(f"CIFAR PreAct-ResNet depth must be 9n+2 (164, 1001, ...), got {depth}")
    n = (depth - 2) // 9
    return PreActResNet(PreActBottleneck, [n, n, n], [16, 32, 64], num_classes, in_channels, stem="cifar",
                        stem_stride=stem_stride)


@register("Pre-activation ResNet", 2016, PAPER, scale="small")
def preact_resnet164(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return cifar_preact_bottleneck(164, num_classes, in_channels, **options)


@register("Pre-activation ResNet", 2016, PAPER, scale="small")
def preact_resnet1001(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    return cifar_preact_bottleneck(1001, num_classes, in_channels, **options)
