"""Deep Networks with Stochastic Depth (Huang, Sun, Liu, Sedra & Weinberger 2016).

During training each residual block is dropped (its branch skipped, the identity kept) with a
probability that grows linearly with depth, from 0 to 1 - p_L = 0.5 at the last block (Eq. 4);
at test time every block is used. The short expected depth trains faster and regularises. The
CIFAR networks are the CIFAR ResNet's (`BasicBlock.stochastic_depth`); ImageNet ResNet-152 is
torchvision's with the same drop in its bottlenecks.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from models.registry import register
from models.resnet import Bottleneck, CifarResNet, imagenet_resnet

PAPER = "Huang et al., Deep Networks with Stochastic Depth (2016)"


# CIFAR ResNets with stochastic depth, linear decay to p_L = `final_survival`; options: `widths`, `stem_stride`.


@register("Stochastic depth", 2016, PAPER, scale="small")
def resnet20_sd(num_classes: int, in_channels: int = 3, image_size: int = 32, final_survival: float = 0.5,
                **options) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels, final_survival=final_survival, **options)


@register("Stochastic depth", 2016, PAPER, scale="small")
def resnet56_sd(num_classes: int, in_channels: int = 3, image_size: int = 32, final_survival: float = 0.5,
                **options) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels, final_survival=final_survival, **options)


@register("Stochastic depth", 2016, PAPER, scale="small")
def resnet110_sd(num_classes: int, in_channels: int = 3, image_size: int = 32, final_survival: float = 0.5,
                 **options) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels, final_survival=final_survival, **options)


class StochasticBottleneck(Bottleneck):
    """Bottleneck whose residual branch passes through `stochastic_depth` (set per block by
    `linear_decay`, so the survival probability can depend on the block's depth)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stochastic_depth: nn.Module = nn.Identity()

    def residual(self, x: Tensor) -> Tensor:
        return self.stochastic_depth(super().residual(x))


def linear_decay(model: nn.Module, final_survival: float) -> nn.Module:
    """Block l of L drops its branch with probability l/L (1 - p_L) (Eq. 4)."""
    blocks = [m for m in model.modules() if isinstance(m, StochasticBottleneck)]
    for index, block in enumerate(blocks, start=1):
        p = index / len(blocks) * (1.0 - final_survival)
        block.stochastic_depth = StochasticDepth(p, "batch") if p > 0 else nn.Identity()
    return model


@register("Stochastic depth", 2016, PAPER, scale="any")
def resnet152_sd(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
                 final_survival: float = 0.5) -> nn.Module:
    """ImageNet ResNet-152 with stochastic depth (Sec. 4, p_L = 0.5): torchvision's ResNet-152."""
    model = imagenet_resnet(StochasticBottleneck, [3, 8, 36, 3], num_classes, in_channels, image_size, variant)
    return linear_decay(model, final_survival)
