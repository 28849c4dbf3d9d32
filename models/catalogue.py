"""The zoo's catalogue: every registered variant with its parameters and FLOPs.

Models are built on the meta device, so even ViT-B/16 or VGG-19 at 224x224 costs no memory and no
arithmetic: FlopCounterMode counts the FLOPs of a batch-1 forward from the shapes alone.
(Deformable convolutions are not counted by FlopCounterMode: their offset convs are, the sampling
is not.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.blocks import count_params
from models.registry import available, build

SIZES_BY_SCALE = {"small": (32,), "imagenet": (224,), "any": (32, 224)}


def flops(model: nn.Module, in_channels: int, image_size: int) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts as 2)."""
    x = torch.empty(1, in_channels, image_size, image_size, device="meta")
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def catalogue(image_sizes: tuple[int, ...] = (32, 224), num_classes: int = 1000, in_channels: int = 3,
              small_num_classes: int = 10, names: list[str] | None = None) -> list[dict]:
    """One dict per registered name: name, family, year, paper, scale, params, flops_<size>.

    Parameters are counted at the variant's design scale (ImageNet, 1000 classes, if it has one;
    else CIFAR, 10 classes); FLOPs are None where a variant is not defined at that size. Models
    trained by fitting (kNN, Bayes) have no trainable parameters and data-dependent FLOPs (None).
    """
    rows = []
    infos = {k: v for k, v in available().items() if names is None or k in names}
    for name, info in sorted(infos.items(), key=lambda kv: (kv[1].year, kv[1].family, kv[0])):
        defined = SIZES_BY_SCALE[info.scale]
        row: dict = dict(name=name, family=info.family, year=info.year, paper=info.paper, scale=info.scale)
        design = 224 if 224 in defined else 32
        classes = num_classes if design == 224 else small_num_classes
        with torch.device("meta"):
            model = build(name, classes, in_channels=in_channels, image_size=design)
        row["params"] = count_params(model)
        for size in image_sizes:
            value = None
            if info.trained_by == "sgd" and size in defined:
                with torch.device("meta"):
                    m = build(name, classes, in_channels=in_channels, image_size=size)
                value = flops(m, in_channels, size)
            row[f"flops_{size}"] = value
        rows.append(row)
    return rows
