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
from models.registry import register

PAPER = "Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks (2019)"

# (width, depth, dropout, resolution the variant was designed for), Table 7 / torchvision.
SCALING = {
    "b0": (1.0, 1.0, 0.2, 224), "b1": (1.0, 1.1, 0.2, 240), "b2": (1.1, 1.2, 0.3, 260),
    "b3": (1.2, 1.4, 0.3, 300), "b4": (1.4, 1.8, 0.4, 380), "b5": (1.6, 2.2, 0.4, 456),
    "b6": (1.8, 2.6, 0.5, 528), "b7": (2.0, 3.1, 0.5, 600),
}


def efficientnet(width: float, depth: float, dropout: float, num_classes: int, in_channels: int, small: bool,
                 stochastic_depth_prob: float = 0.2) -> tv.EfficientNet:
    setting, last_channel = tv._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
    # torchvision trains B5+ with BN eps 1e-3, momentum 0.01 (as the TF reference); same parameters.
    norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01) if width >= 1.6 else None
    model = tv.EfficientNet(setting, dropout, stochastic_depth_prob, num_classes, norm, last_channel)
    stem = model.features[0][0]
    if small or in_channels != 3:
        model.features[0][0] = replace_first_conv(stem, in_channels, stride=1 if small else 2)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


def _variant(key: str) -> None:
    w, d, p, res = SCALING[key]

    def builder(num_classes: int, in_channels: int = 3, image_size: int = res, variant: str | None = None,
                width_mult: float = w, depth_mult: float = d, dropout: float = p,
                stochastic_depth_prob: float = 0.2) -> nn.Module:
        return efficientnet(width_mult, depth_mult, dropout, num_classes, in_channels, is_small(image_size, variant),
                            stochastic_depth_prob)

    builder.__doc__ = f"EfficientNet-{key.upper()}: width x{w}, depth x{d}, designed for {res}x{res}."
    register("EfficientNet", 2019, PAPER, scale="any", name=f"efficientnet_{key}")(builder)


for _key in SCALING:
    _variant(_key)
