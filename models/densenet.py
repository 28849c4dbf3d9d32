"""DenseNet (Huang, Liu, van der Maaten & Weinberger 2017): every layer of a dense block receives the
concatenation of all earlier layers' maps and adds k (the growth rate) of its own.

DenseNet-BC: bottleneck layers BN-ReLU-1x1(4k)-BN-ReLU-3x3(k), and transitions (BN-ReLU-1x1
conv-2x2 avg pool) that compress the channels by theta = 0.5. torchvision's DenseNet is exactly
this (its _DenseLayer, _DenseBlock and _Transition); ImageNet DenseNet-121/169/201 are its own
configurations, and the CIFAR DenseNet-BC (Sec. 3, "three dense blocks") swaps the 7x7 stem and
max pool for one 3x3 conv with 2k filters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import densenet as tv

from models.blocks import is_small, replace_first_conv
from models.classifier import Classifier
from models.registry import register

PAPER = "Huang et al., Densely Connected Convolutional Networks (2017)"


class DenseNet(Classifier, tv.DenseNet):
    """torchvision's DenseNet: features = stem, dense blocks and transitions, and the final BN-ReLU;
    head = global average pool and the linear `classifier`."""

    classifier_path = "classifier"

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.features(x))


def cifar_stem(model: DenseNet, in_channels: int, stride: int = 1) -> DenseNet:
    """3x3 stride-1 conv, and no BN-ReLU-pool after it: the first dense layer pre-activates."""
    f = model.features
    f.conv0 = replace_first_conv(f.conv0, in_channels, kernel_size=3, stride=stride, padding=1)
    f.norm0, f.relu0, f.pool0 = nn.Identity(), nn.Identity(), nn.Identity()
    nn.init.kaiming_normal_(f.conv0.weight)
    return model


def densenet_bc(depth: int, k: int, num_classes: int, in_channels: int, drop_rate: float = 0.0,
                stem_stride: int = 1) -> DenseNet:
    """CIFAR DenseNet-BC (L = depth, growth rate k): three dense blocks (Sec. 3), 2k-filter 3x3 stem."""
    if (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n+4 (40, 100, 190, 250), got {depth}")
    n = (depth - 4) // 6  # layers per block: (depth - 4) / 3 conv pairs, two convs each
    model = DenseNet(growth_rate=k, block_config=(n, n, n), num_init_features=2 * k, bn_size=4,
                     drop_rate=drop_rate, num_classes=num_classes)
    return cifar_stem(model, in_channels, stem_stride)


def imagenet_densenet(k: int, blocks: tuple[int, int, int, int], init: int, num_classes: int, in_channels: int,
                      image_size: int, variant: str | None) -> DenseNet:
    """torchvision's configuration (Table 1); the CIFAR stem below 128 px."""
    model = DenseNet(growth_rate=k, block_config=blocks, num_init_features=init, num_classes=num_classes)
    if is_small(image_size, variant):
        return cifar_stem(model, in_channels)
    if in_channels != 3:
        model.features.conv0 = replace_first_conv(model.features.conv0, in_channels)
    return model


# CIFAR DenseNet-BC (Table 2); `depth` and `k` are options too, with `drop_rate` and `stem_stride`.


@register("DenseNet", 2017, PAPER, scale="small")
def densenet_bc_100_12(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 100, k: int = 12,
                       **options) -> nn.Module:
    return densenet_bc(depth, k, num_classes, in_channels, **options)


@register("DenseNet", 2017, PAPER, scale="small")
def densenet_bc_250_24(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 250, k: int = 24,
                       **options) -> nn.Module:
    return densenet_bc(depth, k, num_classes, in_channels, **options)


# ImageNet DenseNets (Table 1): growth rate 32, 64 stem filters.


@register("DenseNet", 2017, PAPER, scale="any")
def densenet121(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_densenet(32, (6, 12, 24, 16), 64, num_classes, in_channels, image_size, variant)


@register("DenseNet", 2017, PAPER, scale="any")
def densenet169(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_densenet(32, (6, 12, 32, 32), 64, num_classes, in_channels, image_size, variant)


@register("DenseNet", 2017, PAPER, scale="any")
def densenet201(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return imagenet_densenet(32, (6, 12, 48, 32), 64, num_classes, in_channels, image_size, variant)
