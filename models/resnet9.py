"""ResNet-9 (David Page, Myrtle.ai, 2018): the DAWNBench CIFAR-10 network of "How to train your ResNet".

Nine weighted layers: a 64-channel prep conv, three stages that widen 64 -> 128 -> 256 -> 512 and
halve the resolution with a 2x2 max pool, a residual pair of 3x3 convs after the first and the last
stage, a global max pool and one bias-free linear layer whose logits are scaled by 1/8. Every conv is
conv-BN-ReLU. Page trains it at batch 512 with SGD (Nesterov momentum 0.9, weight decay 5e-4), a
piecewise-linear lr that rises for the first 5 epochs and falls to zero, flip + 4-pixel pad-crop +
8x8 cutout and label smoothing 0.2, to 94 % test accuracy in ~24 epochs (bench/recipes/resnet9_94.yaml
holds that recipe as params).
"""

from __future__ import annotations

from torch import Tensor, nn

from models.blocks import require_size
from models.classifier import Classifier
from models.registry import register

PAPER = "Page, How to Train Your ResNet (Myrtle.ai, 2018): DAWNBench CIFAR-10"


class ConvBN(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, then an optional 2x2 max pool."""

    def __init__(self, in_planes: int, planes: int, pool: bool = False) -> None:
        layers = [nn.Conv2d(in_planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class Residual(nn.Module):
    """x + two ConvBN layers of the same width."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.res1 = ConvBN(planes, planes)
        self.res2 = ConvBN(planes, planes)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(Classifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 logit_scale: float = 0.125) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.prep = ConvBN(in_channels, w0)
        self.layer1 = nn.Sequential(ConvBN(w0, w1, pool=True), Residual(w1))
        self.layer2 = ConvBN(w1, w2, pool=True)
        self.layer3 = nn.Sequential(ConvBN(w2, w3, pool=True), Residual(w3))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(w3, num_classes, bias=False)
        self.logit_scale = logit_scale  # Page's final "Mul(0.125)": smaller logits at the start
        # PyTorch's default initialisation, as in Page's code.

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map (N, 512, 4, 4 at 32x32)."""
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def representation(self, x: Tensor) -> Tensor:
        return self.pool(x).flatten(1)  # a global max, not the average

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.representation(x)
        return x if pre_logits else self.fc(x) * self.logit_scale


@register("ResNet-9", 2018, PAPER, scale="small")
def resnet9(num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Module:
    """Page's DAWNBench ResNet-9 for 32x32 inputs; `width` scales every stage (1.0: the paper's)."""
    require_size("resnet9", image_size, (32,))
    widths = tuple(max(1, int(round(c * width))) for c in (64, 128, 256, 512))
    return ResNet9(num_classes, in_channels, widths)
