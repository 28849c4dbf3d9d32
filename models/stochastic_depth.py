"""Deep Networks with Stochastic Depth (Huang, Sun, Liu, Sedra & Weinberger 2016).

During training each residual block is dropped (its branch skipped, the identity kept) with a
probability that grows linearly with depth, from 0 to 1 - p_L = 0.5 at the last block (Eq. 4);
at test time every block is used. The short expected depth trains faster and regularises; the
blocks are the CIFAR ResNet's (`BasicBlock.stochastic_depth`).
"""

from __future__ import annotations

from torch import nn

from models.registry import register
from models.resnet import CifarResNet

PAPER = "Huang et al., Deep Networks with Stochastic Depth (2016)"


def _sd(depth: int) -> None:
    def builder(num_classes: int, in_channels: int = 3, image_size: int = 32, final_survival: float = 0.5,
                widths: tuple[int, ...] | list[int] = (16, 32, 64), stem_stride: int = 1) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, widths=tuple(widths), final_survival=final_survival,
                           stem_stride=stem_stride)

    builder.__doc__ = f"CIFAR ResNet-{depth} with stochastic depth, linear decay to p_L = 0.5."
    register("Stochastic depth", 2016, PAPER, scale="small", name=f"resnet{depth}_sd")(builder)


for _depth in (20, 56, 110):
    _sd(_depth)
