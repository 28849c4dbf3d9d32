"""EfficientNet (Tan & Le 2019): MBConv blocks (inverted bottleneck, depthwise conv, squeeze-and-
excitation, swish) in the B0 layout found by architecture search, scaled by one compound
coefficient phi: depth alpha^phi, width beta^phi, resolution gamma^phi (alpha=1.2, beta=1.1,
gamma=1.15). B0...B7 are torchvision's. `width_mult`/`depth_mult` options build other points of
the same family (e.g. a thinner, shallower B0 for small data). At small scale the stem conv has
stride 1, so a 32x32 image ends at 2x2 instead of 1x1.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import efficientnet as tv

from models.blocks import is_small, replace_first_conv
from models.classifier import SequentialHead
from models.registry import register

PAPER = "Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks (2019)"

class EfficientNet(SequentialHead, tv.EfficientNet):
    """torchvision's EfficientNet: features = stem, MBConv stages and the 1x1 head conv; head =
    average pool, dropout, classifier."""


def efficientnet(width: float, depth: float, dropout: float, num_classes: int, in_channels: int, image_size: int,
                 variant: str | None = None, stochastic_depth_prob: float = 0.2) -> EfficientNet:
    small = is_small(image_size, variant)
    setting, last_channel = tv._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
    # torchvision trains B5+ with BN eps 1e-3, momentum 0.01 (as the TF reference); same parameters.
    norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01) if width >= 1.6 else None
    model = EfficientNet(setting, dropout, stochastic_depth_prob, num_classes, norm, last_channel)
    stem = model.features[0][0]
    if small or in_channels != 3:
        model.features[0][0] = replace_first_conv(stem, in_channels, stride=1 if small else 2)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


# B0 ... B7 (Table 7 / torchvision): width and depth multipliers, dropout, and the resolution each
# was designed for (the default image_size). Option: `stochastic_depth_prob` (0.2).


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b0(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
                    width_mult: float = 1.0, depth_mult: float = 1.0, dropout: float = 0.2, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b1(num_classes: int, in_channels: int = 3, image_size: int = 240, variant: str | None = None,
                    width_mult: float = 1.0, depth_mult: float = 1.1, dropout: float = 0.2, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b2(num_classes: int, in_channels: int = 3, image_size: int = 260, variant: str | None = None,
                    width_mult: float = 1.1, depth_mult: float = 1.2, dropout: float = 0.3, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b3(num_classes: int, in_channels: int = 3, image_size: int = 300, variant: str | None = None,
                    width_mult: float = 1.2, depth_mult: float = 1.4, dropout: float = 0.3, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b4(num_classes: int, in_channels: int = 3, image_size: int = 380, variant: str | None = None,
                    width_mult: float = 1.4, depth_mult: float = 1.8, dropout: float = 0.4, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b5(num_classes: int, in_channels: int = 3, image_size: int = 456, variant: str | None = None,
                    width_mult: float = 1.6, depth_mult: float = 2.2, dropout: float = 0.4, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b6(num_classes: int, in_channels: int = 3, image_size: int = 528, variant: str | None = None,
                    width_mult: float = 1.8, depth_mult: float = 2.6, dropout: float = 0.5, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)


@register("EfficientNet", 2019, PAPER, scale="any")
def efficientnet_b7(num_classes: int, in_channels: int = 3, image_size: int = 600, variant: str | None = None,
                    width_mult: float = 2.0, depth_mult: float = 3.1, dropout: float = 0.5, **options) -> nn.Module:
    return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, image_size, variant, **options)
