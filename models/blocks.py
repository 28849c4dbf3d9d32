"""Pieces shared by several families: conv helpers, the CIFAR option-A shortcut, scale selection.

Anything two families need lives here, so no family copies another's code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

SMALL_VARIANTS = ("small", "cifar")
IMAGENET_VARIANTS = ("imagenet", "large")


def is_small(image_size: int, variant: str | None = None) -> bool:
    """CIFAR-style (small) network or ImageNet one: an explicit `variant` wins, else the input size.

    Below 128 px the ImageNet stems (stride 4 before the first stage) would leave too few pixels,
    so 32x32 and 64x64 inputs get the CIFAR-style stems the papers and their reimplementations use.
    """
    if variant is None:
        return image_size < 128
    if variant in SMALL_VARIANTS:
        return True
    if variant in IMAGENET_VARIANTS:
        return False
    raise ValueError(f"unknown variant {variant!r}; allowed: small, cifar, imagenet")


def require_size(name: str, image_size: int, allowed: tuple[int, ...]) -> None:
    """Fail early, naming the model, for architectures whose geometry fixes the input size."""
    if image_size not in allowed:
        sizes = ", ".join(f"{s}x{s}" for s in allowed)
        raise ValueError(f"{name} is defined for {sizes} inputs, got image_size={image_size}")




def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ShortcutA(nn.Module):
    """He et al. 2015, CIFAR option A: identity shortcut, subsampled by striding and zero-padded
    in the new channels, so the shortcut adds no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


def replace_first_conv(conv: nn.Conv2d, in_channels: int, kernel_size: int | None = None,
                       stride: int | None = None, padding: int | None = None) -> nn.Conv2d:
    """A fresh copy of a stem conv taking `in_channels` inputs (optionally a smaller CIFAR kernel/stride)."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size if kernel_size is not None else conv.kernel_size,
        stride=stride if stride is not None else conv.stride,
        padding=padding if padding is not None else conv.padding,
        bias=conv.bias is not None,
    )


def init_conv_bn(model: nn.Module, zero_init_last_bn: str | None = None) -> nn.Module:
    """He initialisation for convs (He et al. 2015, 'Delving deep'), BN to identity, linears small.

    `zero_init_last_bn` names the attribute of the last BN in each residual block to start at zero,
    so every residual block begins as the identity (Goyal et al. 2017).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if zero_init_last_bn:
        for m in model.modules():
            bn = getattr(m, zero_init_last_bn, None)
            if isinstance(bn, nn.BatchNorm2d) and bn.weight is not None:
                nn.init.zeros_(bn.weight)
    return model


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


