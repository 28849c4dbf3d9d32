"""Vision Transformer (Dosovitskiy et al. 2020), torchvision's VisionTransformer.

The image is cut into P x P patches, each linearly embedded (a stride-P conv); a learned class
token is prepended and learned position embeddings added; pre-LN encoder blocks (LN-MSA-residual,
LN-MLP(GELU)-residual); the head reads the class token. ViT-B/16 at 224 is the paper's base
model. On 32x32 images the small ViTs use patch 4 (8x8 = 64 tokens), as CIFAR ViTs do.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from models.registry import register

PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale (2020)"


def vision_transformer(image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                       mlp_dim: int, num_classes: int, in_channels: int, dropout: float = 0.0,
                       attention_dropout: float = 0.0) -> VisionTransformer:
    if image_size % patch_size:
        raise ValueError(f"ViT: image_size {image_size} is not a multiple of patch_size {patch_size}")
    model = VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                              dropout=dropout, attention_dropout=attention_dropout, num_classes=num_classes)
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
        # torchvision's patch-embedding init: LeCun normal on the fan-in
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / model.conv_proj.weight[0].numel()))
        nn.init.zeros_(model.conv_proj.bias)
    return model


def _vit(name: str, scale: str, patch: int, layers: int, heads: int, dim: int, mlp: int) -> None:
    def builder(num_classes: int, in_channels: int = 3, image_size: int = 224 if scale == "imagenet" else 32,
                patch_size: int = patch, num_layers: int = layers, num_heads: int = heads, hidden_dim: int = dim,
                mlp_dim: int = mlp, dropout: float = 0.0, attention_dropout: float = 0.0) -> nn.Module:
        return vision_transformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes,
                                  in_channels, dropout, attention_dropout)

    builder.__doc__ = f"ViT {name}: patch {patch}, {layers} layers, {heads} heads, width {dim}, MLP {mlp}."
    register("ViT", 2020, PAPER, scale=scale, name=name)(builder)


_vit("vit_b_16", "imagenet", 16, 12, 12, 768, 3072)  # Table 1, ViT-Base
_vit("vit_b_32", "imagenet", 32, 12, 12, 768, 3072)
_vit("vit_tiny_patch4", "small", 4, 12, 3, 192, 768)  # DeiT-Ti widths, patch 4 for 32x32
_vit("vit_small_patch4", "small", 4, 12, 6, 384, 1536)  # DeiT-S widths
