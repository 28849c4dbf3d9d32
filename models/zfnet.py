"""ZFNet (Zeiler & Fergus 2013, Fig. 3): AlexNet with a 7x7 stride-2 first layer (instead of 11x11
stride 4, whose filters the deconvnet showed to be aliased and partly dead) and a stride-2
second layer; the rest as AlexNet, one tower, 384-384-256 in conv3-5."""

from __future__ import annotations

from torch import nn

from models.alexnet import AlexNet
from models.blocks import is_small
from models.registry import register

PAPER = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks (2013)"


@register("ZFNet", 2013, PAPER, scale="any")
def zfnet(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
          width: float = 1.0, hidden: int = 4096, dropout: float = 0.5, stem_stride: int = 1) -> nn.Module:
    """224x224: conv1 7x7/2 -> 110, pool -> 55, conv2 5x5/2 -> 26, pool -> 13, ..., pool -> 6 (Fig. 3).
    Small inputs: 3x3/1 conv1 and 5x5/1 conv2 with the same pools (32 -> 15 -> 7 -> 3)."""
    if is_small(image_size, variant):
        stem = dict(conv1=(3, stem_stride, 1), conv2=(5, 1, 2), pool_to=3 if stem_stride == 1 else 1)
    else:
        stem = dict(conv1=(7, 2, 1), conv2=(5, 2, 0), pool_to=6, ceil_pool=True)  # 55, 13, 6 as in Fig. 3
    return AlexNet(num_classes, in_channels, groups=1, width=width, hidden=hidden, dropout=dropout, **stem)
