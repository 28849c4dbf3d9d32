"""GoogLeNet / Inception v1 (Szegedy et al. 2014), torchvision's implementation.

Inception modules (1x1, 1x1->3x3, 1x1->5x5, pool->1x1 branches concatenated; the 1x1 reductions
keep the cost down) and two auxiliary classifiers on 4a and 4d that only exist to push gradient
into the middle of the network during training: in train mode the model returns
(logits, aux2, aux1) and the trainer adds `aux_loss_weight` x each aux loss (0.3, Sec. 5); in eval
mode it returns the logits alone. (torchvision's version has BN after each conv, as its anchor.)

At small scale the stem's 7x7 stride-2 conv and first max pool give way to a 3x3 stride-1 conv,
so the inception stages see 16x16, 8x8 and 4x4 maps on a 32x32 image.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.googlenet import BasicConv2d, GoogLeNet

from models.blocks import is_small
from models.registry import register

PAPER = "Szegedy et al., Going Deeper with Convolutions (2014)"


@register("GoogLeNet", 2014, PAPER, scale="any")
def googlenet(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              aux_logits: bool = True, dropout: float = 0.2) -> nn.Module:
    model = GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, init_weights=True, dropout=dropout)
    if is_small(image_size, variant):
        model.conv1 = BasicConv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool1 = nn.Identity()
    elif in_channels != 3:
        model.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
    model.aux_loss_weight = 0.3  # Sec. 5: aux losses added with weight 0.3, discarded at inference
    return model
