"""Network in Network (Lin, Chen & Yan 2013): the CIFAR-10 network of Sec. 4.2.

An mlpconv layer replaces the linear filter of a convolution by a small multilayer perceptron
slid over the input: a k x k convolution followed by 1x1 convolutions ("cascaded cross channel
parametric pooling"), each with a ReLU (Eq. 2). Three mlpconv layers, 192-160-96 (5x5),
192-192-192 (5x5) and 192-192-10 (3x3), with a 3x3 stride-2 max pool and then average pool and
dropout 0.5 after the first two. There are no fully connected layers: the last 1x1 layer has one
feature map per class, and their global averages are the class scores (Sec. 3.2, global average
pooling as the classifier). Pools round up, as in the authors' Caffe model: 32 -> 16 -> 8.

Trained from scratch as the paper's (no BN), the network starts slowly: on the embedded digits at
width 0.25 it was still near chance after 4 epochs (SGD 0.05 or AdamW 3e-3), where `batch_norm`
(a BN before every ReLU of the mlpconvs, as later NIN reimplementations) without dropout reached
73 %: a small-data recipe wants those options or a long schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from models.classifier import Classifier
from models.registry import register

PAPER = "Lin, Chen & Yan, Network In Network (2013)"


class MLPConv(nn.Sequential):
    """A k x k convolution, then 1x1 convolutions: a ReLU MLP over each k x k patch (Fig. 1b).
    `batch_norm` puts a BN before each ReLU (not in the paper, which predates BN)."""

    def __init__(self, in_channels: int, channels: Sequence[int], kernel_size: int, batch_norm: bool = False) -> None:
        layers: list[nn.Module] = []
        for i, out in enumerate(channels):
            k = kernel_size if i == 0 else 1
            layers.append(nn.Conv2d(in_channels, out, k, padding=k // 2, bias=not batch_norm))
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            in_channels = out
        super().__init__(*layers)


class NetworkInNetwork(Classifier):
    """Features: the three mlpconv layers up to the last one's class-map layer (N, 192, 8, 8);
    head: that 1x1 class-map layer (`classifier`, with its ReLU) and global average pooling.
    `width` scales every layer but the class maps."""

    classifier_path = "classifier"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.5,
                 batch_norm: bool = False) -> None:
        super().__init__()
        c = lambda v: max(1, int(v * width))  # noqa: E731
        self.mlpconv1 = MLPConv(in_channels, (c(192), c(160), c(96)), 5, batch_norm)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.dropout1 = nn.Dropout(dropout)
        self.mlpconv2 = MLPConv(c(96), (c(192), c(192), c(192)), 5, batch_norm)
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.dropout2 = nn.Dropout(dropout)
        self.mlpconv3 = MLPConv(c(192), (c(192), c(192)), 3, batch_norm)
        self.classifier = nn.Conv2d(c(192), num_classes, 1)  # the third mlpconv's last layer: the class maps
        # He initialisation on the fan-in (no BN: the signal keeps its scale through the ReLUs) in
        # place of the authors' hand-tuned small Gaussians.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.dropout1(self.pool1(self.mlpconv1(x)))
        x = self.dropout2(self.pool2(self.mlpconv2(x)))
        return self.mlpconv3(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if not pre_logits:
            x = F.relu(self.classifier(x))  # one confidence map per class, rectified as every mlpconv layer
        return self.representation(x)  # global average pooling


@register("Network in Network", 2013, PAPER, scale="small")
def nin(num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0, dropout: float = 0.5,
        batch_norm: bool = False) -> nn.Module:
    """CIFAR-10 NIN: 966,986 parameters at 10 classes."""
    return NetworkInNetwork(num_classes, in_channels, width, dropout, batch_norm)
