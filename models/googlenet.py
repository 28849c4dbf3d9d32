"""GoogLeNet / Inception v1 (Szegedy et al. 2014), Table 1 and Sec. 5.

Inception modules (1x1, 1x1->3x3, 1x1->5x5, pool->1x1 branches concatenated; the 1x1 reductions
keep the cost down), global average pooling, dropout 0.4, a linear classifier. Two auxiliary
classifiers on 4a and 4d (5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 0.7, linear) only
exist to push gradient into the middle of the network during training: in train mode the model
returns (logits, aux2, aux1), torchvision's GoogLeNetOutputs, and the trainer adds
`aux_loss_weight` = 0.3 x each aux loss (Sec. 5); in eval mode it returns the logits alone.

`googlenet` is the paper's network: a real 5x5 conv in the third branch and dropout 0.4: 7,005,832
parameters at 1000 classes without the auxiliary classifiers, 13,385,816 with them.
`googlenet_torchvision` is torchvision's to the parameter (same module names, so its weights load):
its "5x5" branch is a 3x3 conv (a known bug kept for its pretrained weights, pytorch/vision#906)
and its dropout 0.2: 6,624,904 / 13,004,888 parameters. Both follow torchvision in one respect:
every conv is followed by batch normalisation, where the paper (before BN) has two local
response normalisations in the stem.

At small scale the stem's 7x7 stride-2 conv and first max pool give way to a 3x3 stride-1 conv,
so the inception stages see 16x16, 8x8 and 4x4 maps on a 32x32 image.

`reductions=False` builds every module in the naive form of Fig. 2(a): the 3x3 and 5x5 convs read
the whole input and the pooling branch passes it on unprojected, so the width grows from module to
module; "this naive form ... would lead to a computational blow up within a few stages" (Sec. 4).
Filter counts are Table 1's, the reduce columns unused: the experiment of
experiments/bottleneck_1x1.yaml.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.googlenet import BasicConv2d, GoogLeNetOutputs, Inception, InceptionAux

from models.blocks import is_small
from models.classifier import Classifier
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


class InceptionModule(Inception):
    """Fig. 2(b), as the paper draws it: torchvision's Inception with its third branch's 3x3 conv
    made the paper's 5x5."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)
        self.branch3[1] = BasicConv2d(ch5x5red, ch5x5, kernel_size=5, padding=2)


class NaiveInception(nn.Module):
    """Fig. 2(a): 1x1, 3x3 and 5x5 convolutions and a 3x3 max pooling side by side on the same input,
    concatenated. No 1x1 reductions: the pooling branch passes all its input channels on, so the
    module outputs ch1x1 + ch3x3 + ch5x5 + in_channels maps."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = BasicConv2d(in_channels, ch3x3, kernel_size=3, padding=1)
        self.branch3 = BasicConv2d(in_channels, ch5x5, kernel_size=5, padding=2)
        self.branch4 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True)

    @staticmethod
    def out_channels(in_channels: int, ch1x1: int, ch3x3: int, ch5x5: int, pool_proj: int) -> int:
        return ch1x1 + ch3x3 + ch5x5 + in_channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def inception_out_channels(inception: type[nn.Module], in_channels: int, ch1x1: int, ch3x3: int, ch5x5: int,
                           pool_proj: int) -> int:
    """The maps a module outputs: its four branches' (the naive module passes its input on)."""
    if inception is NaiveInception:
        return NaiveInception.out_channels(in_channels, ch1x1, ch3x3, ch5x5, pool_proj)
    return ch1x1 + ch3x3 + ch5x5 + pool_proj


class GoogLeNet(Classifier):
    """Table 1 top to bottom; `width` scales every filter count of the table (for small data; 1.0
    is the paper's network), `inception` is the module (the paper's or torchvision's)."""

    aux_loss_weight = 0.3  # Sec. 5: aux losses added with weight 0.3, discarded at inference

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, small: bool = False, aux_logits: bool = True,
                 dropout: float = 0.4, dropout_aux: float = 0.7, width: float = 1.0,
                 inception: type[Inception] = InceptionModule) -> None:
        super().__init__()
        c = lambda v: max(1, int(v * width))  # noqa: E731
        if small:
            self.conv1 = BasicConv2d(in_channels, c(64), kernel_size=3, stride=1, padding=1)
            self.maxpool1 = nn.Identity()
        else:
            self.conv1 = BasicConv2d(in_channels, c(64), kernel_size=7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(c(64), c(64), kernel_size=1)
        self.conv3 = BasicConv2d(c(64), c(192), kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels, outputs = c(192), {}
        for name, (b1, r3, b3, r5, b5, pool) in INCEPTIONS.items():
            setattr(self, name, inception(channels, c(b1), c(r3), c(b3), c(r5), c(b5), c(pool)))
            channels = outputs[name] = inception_out_channels(inception, channels, c(b1), c(b3), c(b5), c(pool))
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.aux1 = InceptionAux(outputs["inception4a"], num_classes, dropout=dropout_aux) if aux_logits else None
        self.aux2 = InceptionAux(outputs["inception4d"], num_classes, dropout=dropout_aux) if aux_logits else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        # torchvision's initialisation: truncated normal, std 0.01, for every conv and linear layer
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self, x: Tensor, aux: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The feature map after 5b, and the auxiliary logits read at 4a and 4d when `aux`."""
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if aux else None
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x)), aux1, aux2

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)[0]

    def representation(self, x: Tensor) -> Tensor:
        return self.dropout(super().representation(x))

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        with_aux = self.training and self.aux1 is not None
        x, aux1, aux2 = self.stages(x, with_aux)
        logits = self.forward_head(x)
        return GoogLeNetOutputs(logits, aux2, aux1) if with_aux else logits

    def reset_classifier(self, num_classes: int) -> None:
        """The final classifier and the auxiliary classifiers' last layers."""
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = self.new_classifier(aux.fc2, num_classes)


@register("GoogLeNet", 2014, PAPER, scale="any")
def googlenet(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              aux_logits: bool = True, dropout: float = 0.4, width: float = 1.0, reductions: bool = True) -> nn.Module:
    """The paper's GoogLeNet: 5x5 convs in the inception modules, dropout 0.4; `reductions=False`: the
    naive modules of Fig. 2(a)."""
    return GoogLeNet(num_classes, in_channels, is_small(image_size, variant), aux_logits, dropout, width=width,
                     inception=InceptionModule if reductions else NaiveInception)


@register("GoogLeNet", 2014, "Szegedy et al. 2014, torchvision's implementation (3x3 for the 5x5 conv)", scale="any")
def googlenet_torchvision(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
                          aux_logits: bool = True, dropout: float = 0.2, width: float = 1.0) -> nn.Module:
    """torchvision's googlenet, module for module: the 3x3 "5x5" branch, dropout 0.2."""
    return GoogLeNet(num_classes, in_channels, is_small(image_size, variant), aux_logits, dropout, width=width,
                     inception=Inception)
