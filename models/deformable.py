"""Deformable Convolutional Networks (Dai et al. 2017): a 3x3 conv whose 9 sampling points are
shifted by learned 2-D offsets, predicted from the same input by a plain 3x3 conv (Fig. 2).

As in the paper (Sec. 3: "the last three 3x3 conv layers in conv5"), the last three 3x3 convs
of a ResNet's last stage become deformable. The offset convs start at zero, so at initialisation every
deformable conv samples the regular grid: the network equals its ResNet.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet as tv
from torchvision.ops import DeformConv2d

from models.registry import register
from models.resnet import Bottleneck, CifarResNet, imagenet_resnet

PAPER = "Dai et al., Deformable Convolutional Networks (2017)"


class DeformableConv2d(nn.Module):
    """offsets = conv3x3(x) (2 per kernel tap, zero-initialised); y = DeformConv2d(x, offsets)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, stride, padding, dilation)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DeformableConv2d:
        """Same geometry as `conv`, and its weights, so the swap changes nothing at init."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                  conv.dilation[0], conv.groups, conv.bias is not None)
        new.conv.weight.data.copy_(conv.weight.data)
        if conv.bias is not None:
            new.conv.bias.data.copy_(conv.bias.data)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, self.offset(x))


def make_last_convs_deformable(stage: nn.Sequential, count: int = 3) -> nn.Sequential:
    """The last `count` 3x3 convs of the stage become deformable (the paper: the last three of
    conv5). A bottleneck's 1x1 convs stay as they are."""
    convs = [(block, name) for block in stage for name in ("conv1", "conv2")
             if isinstance(getattr(block, name), nn.Conv2d) and getattr(block, name).kernel_size == (3, 3)]
    for block, name in convs[-count:]:
        setattr(block, name, DeformableConv2d.from_conv(getattr(block, name)))
    return stage


@register("Deformable ConvNets", 2017, PAPER, scale="small")
def deform_resnet20(num_classes: int, in_channels: int = 3, image_size: int = 32,
                    widths: tuple[int, ...] | list[int] = (16, 32, 64), stem_stride: int = 1) -> nn.Module:
    """CIFAR ResNet-20 (option A) whose last three 3x3 convs (last stage: 64 filters, 8x8) are deformable."""
    model = CifarResNet(20, num_classes, in_channels, widths=tuple(widths), stem_stride=stem_stride)
    make_last_convs_deformable(model.layer3)
    return model


def deformable_resnet(block: type[nn.Module], layers: list[int], num_classes: int, in_channels: int,
                      image_size: int, variant: str | None) -> nn.Module:
    """torchvision's ResNet whose last three 3x3 convs of conv5 are deformable."""
    model = imagenet_resnet(block, layers, num_classes, in_channels, image_size, variant)
    make_last_convs_deformable(model.layer4)
    return model


@register("Deformable ConvNets", 2017, PAPER, scale="any")
def deform_resnet18(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return deformable_resnet(tv.BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size, variant)


@register("Deformable ConvNets", 2017, PAPER, scale="any")
def deform_resnet50(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return deformable_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, variant)


@register("Deformable ConvNets", 2017, PAPER, scale="any")
def deform_resnet101(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None) -> nn.Module:
    return deformable_resnet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, image_size, variant)
