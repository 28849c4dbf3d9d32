"""CoAtNet (Dai, Liu, Le & Tan 2021): convolution then attention, "C-C-T-T".

S0 a two-layer conv stem; S1, S2 MBConv blocks (pre-norm inverted bottleneck with SE, as in
EfficientNet; torchvision's MaxViT MBConv is exactly this block); S3, S4 pre-norm transformer
blocks whose attention over all positions adds a learned bias per relative offset (Eq. 3:
softmax(q.k + w_{i-j})), so translation equivariance and input-adaptive weights combine. Every
stage starts by halving the resolution: in the transformer stages x <- Proj(Pool(x)) +
Attention(Pool(Norm(x))) (Eq. 5). CoAtNet-0: L = (2, 2, 3, 5, 2), D = (64, 96, 192, 384, 768).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.maxvit import MBConv
from torchvision.ops import Conv2dNormActivation, StochasticDepth

from models.blocks import is_small
from models.classifier import Classifier
from models.registry import register

PAPER = "Dai et al., CoAtNet: Marrying Convolution and Attention for All Data Sizes (2021)"


def relative_position_index(size: int) -> Tensor:
    """(N, N) index into a (2S-1)^2 table of the offset between positions i and j of an S x S map."""
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]) + size - 1  # (2, N, N), each in [0, 2S-2]
    return rel[0] * (2 * size - 1) + rel[1]


class RelativeAttention(nn.Module):
    """Multi-head self-attention over the S x S positions with a learned relative-position bias."""

    def __init__(self, in_dim: int, out_dim: int, size: int, head_dim: int = 32) -> None:
        super().__init__()
        if out_dim % head_dim:
            raise ValueError(f"CoAtNet: width {out_dim} is not a multiple of head_dim {head_dim}")
        self.heads = out_dim // head_dim
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        self.proj = nn.Linear(out_dim, out_dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * size - 1) ** 2, self.heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, N, C)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    """x <- Proj(Pool(x)) + Attention(Pool(LN(x))); x <- x + FFN(LN(x)), FFN = Linear-GELU-Linear (x4)."""

    def __init__(self, in_dim: int, out_dim: int, size: int, stride: int, head_dim: int = 32,
                 expansion: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.proj = nn.Conv2d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = RelativeAttention(in_dim, out_dim, size, head_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.ffn = nn.Sequential(nn.Linear(out_dim, expansion * out_dim), nn.GELU(), nn.Linear(expansion * out_dim, out_dim))
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        x = self.pool(x)
        b, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        out = self.proj(x).flatten(2).transpose(1, 2) + self.drop_path(self.attn(self.norm1(tokens)))
        out = out + self.drop_path(self.ffn(self.norm2(out)))
        return out.transpose(1, 2).reshape(b, -1, h, w)


class CoAtNet(Classifier):
    """Features: S0 ... S4's map; head: global average pool, LayerNorm, pre-logits, `head`."""

    classifier_path = "head"

    def __init__(self, depths: Sequence[int], dims: Sequence[int], num_classes: int, in_channels: int = 3,
                 image_size: int = 224, small: bool = False, drop_path: float = 0.0, head_dim: int = 32,
                 pre_logits: bool = True) -> None:
        super().__init__()
        # S0: two 3x3 convs, the first strided (stride 1 on small images: 32 -> 32 -> 16 -> 8 -> 4 -> 2)
        s0 = 1 if small else 2
        self.s0 = nn.Sequential(
            Conv2dNormActivation(in_channels, dims[0], 3, s0, activation_layer=nn.GELU, inplace=None),
            *[Conv2dNormActivation(dims[0], dims[0], 3, 1, activation_layer=nn.GELU, inplace=None) for _ in range(depths[0] - 1)],
        )
        size = -(-image_size // s0)
        total = sum(depths[1:])
        rates = [drop_path * i / max(1, total - 1) for i in range(total)]
        stages, in_dim, r = [], dims[0], 0
        for stage, (depth, dim) in enumerate(zip(depths[1:], dims[1:]), start=1):
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 else 1
                size = -(-size // stride)
                if stage <= 2:
                    blocks.append(MBConv(in_dim, dim, 4.0, 0.25, stride, nn.GELU, nn.BatchNorm2d, rates[r]))
                else:
                    blocks.append(TransformerBlock(in_dim, dim, size, stride, head_dim, 4, rates[r]))
                in_dim, r = dim, r + 1
            stages.append(nn.Sequential(*blocks))
        self.s1, self.s2, self.s3, self.s4 = stages
        self.norm = nn.LayerNorm(in_dim)
        # The reference implementation (shared with MaxViT) puts a dense-tanh "pre-logits" layer, as
        # ViT's representation layer, before the classifier; the paper's 25/42/75 M counts include it.
        self.pre_logits = nn.Sequential(nn.Linear(in_dim, in_dim), nn.Tanh()) if pre_logits else nn.Identity()
        self.head = nn.Linear(in_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.s4(self.s3(self.s2(self.s1(self.s0(x)))))

    def representation(self, x: Tensor) -> Tensor:
        return self.pre_logits(self.norm(x.mean((2, 3))))


def coatnet(depths: Sequence[int], dims: Sequence[int], num_classes: int, in_channels: int, image_size: int,
            variant: str | None = None, **options) -> CoAtNet:
    """Options: `drop_path`, `head_dim`, `pre_logits`; `depths` and `dims` for a smaller network."""
    return CoAtNet(tuple(depths), tuple(dims), num_classes, in_channels, image_size,
                   small=is_small(image_size, variant), **options)


# Table 3: L = blocks per stage S0..S4, D = their widths.


@register("CoAtNet", 2021, PAPER, scale="any")
def coatnet_0(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              depths: Sequence[int] = (2, 2, 3, 5, 2), dims: Sequence[int] = (64, 96, 192, 384, 768),
              **options) -> nn.Module:
    return coatnet(depths, dims, num_classes, in_channels, image_size, variant, **options)


@register("CoAtNet", 2021, PAPER, scale="any")
def coatnet_1(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              depths: Sequence[int] = (2, 2, 6, 14, 2), dims: Sequence[int] = (64, 96, 192, 384, 768),
              **options) -> nn.Module:
    return coatnet(depths, dims, num_classes, in_channels, image_size, variant, **options)


@register("CoAtNet", 2021, PAPER, scale="any")
def coatnet_2(num_classes: int, in_channels: int = 3, image_size: int = 224, variant: str | None = None,
              depths: Sequence[int] = (2, 2, 6, 14, 2), dims: Sequence[int] = (128, 128, 256, 512, 1024),
              **options) -> nn.Module:
    return coatnet(depths, dims, num_classes, in_channels, image_size, variant, **options)
