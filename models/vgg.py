"""VGG (Simonyan & Zisserman 2014): stacks of 3x3 convolutions only, max pooling between stacks.

Configurations A, B, D, E of Table 1 (torchvision's `cfgs` keys) are VGG-11/13/16/19; `_bn` adds batch normalisation after
every conv (not in the paper, which predates BN, but the standard way to train them from scratch).
ImageNet networks are torchvision's (7x7x512 -> 4096 -> 4096 -> classes). At small scale the five
pools leave 1x1x512 and the classifier is a single linear layer (the standard CIFAR VGG).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import vgg as tv

from models.blocks import is_small
from models.classifier import Classifier, SequentialHead
from models.registry import register

PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition (2014)"


def make_features(cfg: str, batch_norm: bool, in_channels: int, width: float = 1.0) -> nn.Sequential:
    """The conv stacks of Table 1; `width` scales every layer's filters (for small data)."""
    layers: list[nn.Module] = []
    for v in tv.cfgs[cfg]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = max(1, int(int(v) * width))
        layers.append(nn.Conv2d(in_channels, out, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out
    return nn.Sequential(*layers)


class SmallVGG(Classifier):
    """CIFAR VGG: the same conv stacks, global 1x1x512 features, one linear classifier."""

    classifier_path = "classifier"

    def __init__(self, cfg: str, batch_norm: bool, num_classes: int, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        self.features = make_features(cfg, batch_norm, in_channels, width)
        channels = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)][-1]
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class VGG(SequentialHead, tv.VGG):
    """torchvision's ImageNet VGG: features = the conv stacks, head = 7x7 pool, 4096-4096 FCs, classifier."""


def vgg(cfg: str, batch_norm: bool, num_classes: int, in_channels: int, image_size: int, variant: str | None,
        width: float = 1.0) -> nn.Module:
    """Configuration `cfg` of Table 1; the CIFAR VGG below 128 px. `width` is a small-scale option."""
    if is_small(image_size, variant):
        return SmallVGG(cfg, batch_norm, num_classes, in_channels, width)
    if width != 1.0:
        raise ValueError("VGG: width is a small-scale option; the ImageNet network is the paper's")
    return VGG(make_features(cfg, batch_norm, in_channels), num_classes=num_classes)


@register("VGG", 2014, PAPER, scale="any")
def vgg11(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
          **options) -> nn.Module:
    return vgg("A", False, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg11_bn(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return vgg("A", True, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg13(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
          **options) -> nn.Module:
    return vgg("B", False, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg13_bn(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return vgg("B", True, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg16(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
          **options) -> nn.Module:
    return vgg("D", False, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg16_bn(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return vgg("D", True, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg19(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
          **options) -> nn.Module:
    return vgg("E", False, num_classes, in_channels, image_size, variant, **options)


@register("VGG", 2014, PAPER, scale="any")
def vgg19_bn(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
             **options) -> nn.Module:
    return vgg("E", True, num_classes, in_channels, image_size, variant, **options)
