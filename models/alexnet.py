"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), Sec. 3 and Fig. 2 of the paper.

Five convolutions 96-256-384-384-256 with ReLU, local response normalisation after the first two,
overlapping 3x3 stride-2 max pooling, then 4096-4096 fully connected layers with dropout 0.5.
`groups=2` restores the two-tower split across the two GPUs (conv2, conv4, conv5 see only their
own tower's maps; conv3 and the FC layers cross towers). ZFNet reuses this class with its own stem.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.alexnet import AlexNet as TVAlexNet

from models.blocks import is_small, replace_first_conv, require_size
from models.classifier import SequentialHead
from models.registry import register

PAPER = "Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks (2012)"

# Sec. 3.3: b = a / (k + alpha sum_{j over n adjacent maps} a_j^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75.
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75


def local_response_norm() -> nn.LocalResponseNorm:
    """The paper's local response normalisation. torch's LocalResponseNorm (as Caffe's LRN) divides
    alpha by n, b = a / (k + alpha/n sum a_j^2)^beta, so the paper's alpha is passed as alpha * n;
    passing 1e-4 itself would normalise with an effective alpha of 2e-5."""
    return nn.LocalResponseNorm(LRN_N, alpha=LRN_ALPHA * LRN_N, beta=LRN_BETA, k=LRN_K)


class AlexNet(SequentialHead):
    """`conv1`/`conv2` = (kernel, stride, padding) of the first two layers (ZFNet changes them);
    `width` scales the conv channels and `hidden` the FC layers, for small data."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, groups: int = 1,
                 conv1: tuple[int, int, int] = (11, 4, 2), conv2: tuple[int, int, int] = (5, 1, 2),
                 width: float = 1.0, hidden: int = 4096, dropout: float = 0.5, pool_to: int = 6,
                 ceil_pool: bool = False) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (max(groups, int(c * width)) // groups * groups for c in (96, 256, 384, 384, 256))
        k1, s1, p1 = conv1
        k2, s2, p2 = conv2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, k1, s1, p1), nn.ReLU(inplace=True),
            local_response_norm(),
            nn.MaxPool2d(3, 2, ceil_mode=ceil_pool),
            nn.Conv2d(c1, c2, k2, s2, p2, groups=groups), nn.ReLU(inplace=True),
            local_response_norm(),
            nn.MaxPool2d(3, 2, ceil_mode=ceil_pool),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=ceil_pool),
        )
        # The paper's 227x227 input gives 6x6 maps here; the adaptive pool also accepts 224x224.
        self.avgpool = nn.AdaptiveAvgPool2d(pool_to)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c5 * pool_to * pool_to, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        # He initialisation (fan-in, so the signal keeps its scale through the ReLUs without BN)
        # instead of the paper's N(0, 0.01) with unit biases: the same network, but it trains from
        # scratch without the paper's hand-tuned learning-rate schedule.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class TorchvisionAlexNet(SequentialHead, TVAlexNet):
    """torchvision's AlexNet, seen through the zoo's faces."""


def small_alexnet_kwargs(stem_stride: int = 1) -> dict:
    """CIFAR-style stem: a 5x5 stride-1 first conv (an 11x11 stride-4 one would leave 7x7 pixels),
    the rest unchanged; three overlapping pools take 32x32 down to 3x3."""
    return dict(conv1=(5, stem_stride, 2), pool_to=3 if stem_stride == 1 else 1)


@register("AlexNet", 2012, PAPER, scale="any")
def alexnet(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
            groups: int = 1, width: float = 1.0, hidden: int = 4096, dropout: float = 0.5,
            stem_stride: int = 1) -> nn.Module:
    """One tower by default (62,378,344 params); groups=2 is the paper's two-GPU net (60,965,224)."""
    extra = small_alexnet_kwargs(stem_stride) if is_small(image_size, variant) else {}
    return AlexNet(num_classes, in_channels, groups, width=width, hidden=hidden, dropout=dropout, **extra)


@register("AlexNet", 2014, "Krizhevsky, One weird trick for parallelizing CNNs (2014): torchvision's alexnet",
          scale="imagenet")
def alexnet_torchvision(num_classes: int, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """torchvision's smaller single-tower variant (64-192-384-256-256, no LRN): 61,100,840 params."""
    require_size("alexnet_torchvision", image_size, (224, 227))
    model = TorchvisionAlexNet(num_classes=num_classes)
    if in_channels != 3:
        model.features[0] = replace_first_conv(model.features[0], in_channels)
    return model
