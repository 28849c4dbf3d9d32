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
from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception, InceptionAux

from models.blocks import is_small
from models.registry import register

PAPER = "Szegedy et al., Going Deeper with Convolutions (2014)"

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj of each inception module.
INCEPTIONS = {
    "inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64), "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64), "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128), "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


def thin(model: GoogLeNet, width: float, num_classes: int) -> GoogLeNet:
    """Scale every filter count of Table 1 by `width` (for small data; 1.0 is the paper's net)."""
    c = lambda v: max(1, int(v * width))  # noqa: E731
    model.conv2 = BasicConv2d(model.conv1.conv.out_channels, c(64), kernel_size=1)
    model.conv3 = BasicConv2d(c(64), c(192), kernel_size=3, padding=1)
    channels, outputs = c(192), {}
    for name, (b1, r3, b3, r5, b5, pool) in INCEPTIONS.items():
        setattr(model, name, Inception(channels, c(b1), c(r3), c(b3), c(r5), c(b5), c(pool)))
        channels = outputs[name] = c(b1) + c(b3) + c(b5) + c(pool)
    if model.aux_logits:
        model.aux1 = InceptionAux(outputs["inception4a"], num_classes)
        model.aux2 = InceptionAux(outputs["inception4d"], num_classes)
    model.fc = nn.Linear(channels, num_classes)
    return model


@register("GoogLeNet", 2014, PAPER, scale="any")
def googlenet(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              aux_logits: bool = True, dropout: float = 0.2, width: float = 1.0) -> nn.Module:
    model = GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, init_weights=True, dropout=dropout)
    if is_small(image_size, variant):
        model.conv1 = BasicConv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool1 = nn.Identity()
    elif in_channels != 3:
        model.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
    if width != 1.0:
        thin(model, width, num_classes)
    model.aux_loss_weight = 0.3  # Sec. 5: aux losses added with weight 0.3, discarded at inference
    return model
