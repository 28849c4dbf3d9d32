"""Vision Transformer (Dosovitskiy et al. 2020), torchvision's VisionTransformer.

The image is cut into P x P patches, each linearly embedded (a stride-P conv); a learned class
token is prepended and learned position embeddings added; pre-LN encoder blocks (LN-MSA-residual,
LN-MLP(GELU)-residual); the head reads the class token. ViT-B/16 at 224 is the paper's base
model. On 32x32 images the small ViTs use patch 4 (8x8 = 64 tokens), as CIFAR ViTs do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

from models.classifier import Classifier
from models.registry import register

PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale (2020)"


class ViT(Classifier, VisionTransformer):
    """torchvision's VisionTransformer: features = the class token and the patch tokens after the
    encoder (N, 1 + patches, width); head = the class token's linear classifier."""

    classifier_path = "heads.head"

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._process_input(x)  # patch embedding + flatten: (N, patches, width)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)  # + position embeddings, pre-LN blocks, final LN

    def representation(self, x: Tensor) -> Tensor:
        return x[:, 0]  # the class token


def vision_transformer(image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                       mlp_dim: int, num_classes: int, in_channels: int, dropout: float = 0.0,
                       attention_dropout: float = 0.0, position_embedding: bool = True) -> ViT:
    if image_size % patch_size:
        raise ValueError(f"ViT: image_size {image_size} is not a multiple of patch_size {patch_size}")
    model = ViT(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                dropout=dropout, attention_dropout=attention_dropout, num_classes=num_classes)
    if not position_embedding:
        # The "no positional information" row of the paper's ablation (Appendix D.4, Table 8): the
        # patches are a bag. Zero and frozen, so checkpoints keep the same keys.
        model.encoder.pos_embedding = nn.Parameter(torch.zeros_like(model.encoder.pos_embedding), requires_grad=False)
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
        # torchvision's patch-embedding init: LeCun normal on the fan-in
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / model.conv_proj.weight[0].numel()))
        nn.init.zeros_(model.conv_proj.bias)
    return model


# The architecture's numbers are options too (a smaller ViT for small data); with `dropout`,
# `attention_dropout` and `position_embedding` (false: no position embeddings, learned or otherwise).


@register("ViT", 2020, PAPER, scale="imagenet")
def vit_b_16(num_classes: int, in_channels: int = 3, image_size: int = 224, patch_size: int = 16,
             num_layers: int = 12, num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072,
             **options) -> nn.Module:
    """ViT-Base/16 (Table 1)."""
    return vision_transformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes,
                              in_channels, **options)


@register("ViT", 2020, PAPER, scale="imagenet")
def vit_b_32(num_classes: int, in_channels: int = 3, image_size: int = 224, patch_size: int = 32,
             num_layers: int = 12, num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072,
             **options) -> nn.Module:
    """ViT-Base/32 (Table 1)."""
    return vision_transformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes,
                              in_channels, **options)


@register("ViT", 2020, PAPER, scale="small")
def vit_tiny_patch4(num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                    num_layers: int = 12, num_heads: int = 3, hidden_dim: int = 192, mlp_dim: int = 768,
                    **options) -> nn.Module:
    """DeiT-Ti widths, patch 4 for 32x32 (8x8 = 64 tokens)."""
    return vision_transformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes,
                              in_channels, **options)


@register("ViT", 2020, PAPER, scale="small")
def vit_small_patch4(num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                     num_layers: int = 12, num_heads: int = 6, hidden_dim: int = 384, mlp_dim: int = 1536,
                     **options) -> nn.Module:
    """DeiT-S widths, patch 4 for 32x32."""
    return vision_transformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes,
                              in_channels, **options)
