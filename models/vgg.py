"""VGG (Simonyan & Zisserman 2014): stacks of 3x3 convolutions only, max pooling between stacks.

Configurations A, B, D, E of Table 1 (torchvision's `cfgs` keys) are VGG-11/13/16/19; `_bn` adds batch normalisation after
every conv (not in the paper, which predates BN, but the standard way to train them from scratch).
ImageNet networks are torchvision's (7x7x512 -> 4096 -> 4096 -> classes). At small scale the five
pools leave 1x1x512 and the classifier is a single linear layer (the standard CIFAR VGG).

`one_conv_per_stack` builds the paper's control of Sec. 4.1: every stack of n 3x3 convs between two
pools becomes one conv with a (2n+1)x(2n+1) kernel, the same receptive field with fewer
non-linearities and more weights (27C^2 for three 3x3 layers, 49C^2 for one 7x7: Sec. 2.3). "The
top-1 error of the shallow net was measured to be 7 % higher than that of B" (its 5x5 version).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import vgg as tv

from models.blocks import is_small
from models.classifier import Classifier, SequentialHead
from models.registry import register

PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition (2014)"


def make_features(cfg: str, batch_norm: bool, in_channels: int, width: float = 1.0,
                  one_conv_per_stack: bool = False) -> nn.Sequential:
    """The conv stacks of Table 1; `width` scales every layer's filters (for small data);
    `one_conv_per_stack`: each stack of n 3x3 convs as one (2n+1)x(2n+1) conv (Sec. 4.1's shallow net)."""
    layers: list[nn.Module] = []
    for stack in _stacks(tv.cfgs[cfg]):
        kernels = [2 * len(stack) + 1] if one_conv_per_stack else [3] * len(stack)
        for kernel in kernels:
            out = max(1, int(int(stack[-1]) * width))
            layers.append(nn.Conv2d(in_channels, out, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _stacks(cfg: list) -> list[list[int]]:
    """Table 1's column as the conv widths between pools: [64, "M", 128, 128, "M"] -> [[64], [128, 128]]."""
    stacks: list[list[int]] = [[]]
    for v in cfg:
        if v == "M":
            stacks.append([])
        else:
            stacks[-1].append(int(v))
    return [stack for stack in stacks if stack]


class SmallVGG(Classifier):
    """CIFAR VGG: the same conv stacks, global 1x1x512 features, one linear classifier."""

    classifier_path = "classifier"

    def __init__(self, cfg: str, batch_norm: bool, num_classes: int, in_channels: int, width: float = 1.0,
                 one_conv_per_stack: bool = False) -> None:
        super().__init__()
        self.features = make_features(cfg, batch_norm, in_channels, width, one_conv_per_stack)
        channels = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)][-1]
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class VGG(SequentialHead, tv.VGG):
    """torchvision's ImageNet VGG: features = the conv stacks, head = 7x7 pool, 4096-4096 FCs, classifier."""


def vgg(cfg: str, batch_norm: bool, num_classes: int, in_channels: int, image_size: int, variant: str | None,
        width: float = 1.0, one_conv_per_stack: bool = False) -> nn.Module:
    """Configuration `cfg` of Table 1; the CIFAR VGG below 128 px. `width` is a small-scale option."""
    if is_small(image_size, variant):
        return SmallVGG(cfg, batch_norm, num_classes, in_channels, width, one_conv_per_stack)
    if width != 1.0:
        raise ValueError("VGG: width is a small-scale option; the ImageNet network is the paper's")
    return VGG(make_features(cfg, batch_norm, in_channels, one_conv_per_stack=one_conv_per_stack),
               num_classes=num_classes)


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
