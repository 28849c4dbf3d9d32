"""The zoo's catalogue: every registered variant with its parameters and FLOPs.

Models are built on the meta device, so even ViT-B/16 or VGG-19 at 224x224 costs no memory and no
arithmetic: FlopCounterMode counts the FLOPs of a batch-1 forward from the shapes alone.
(Deformable convolutions are not counted by FlopCounterMode: their offset convs are, the sampling
is not.)

Counting the whole zoo still takes half a minute, so the result is committed as `catalogue.json`
beside this file, which `zooflow zoo` reads, with `catalogue.sha256`, the digest of the models/ sources
it was counted from; regenerate both after changing the zoo with

    python -m models.catalogue --write

(tests/test_catalogue.py fails while the committed digest is not the sources', and recounts a sample).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.blocks import count_params
from models.registry import available, build

SIZES_BY_SCALE = {"small": (32,), "imagenet": (224,), "any": (32, 224)}
# Each input size with the class count it is counted at: CIFAR-10 scale, ImageNet-1k scale.
CLASSES_AT = {32: 10, 224: 1000}
PATH = Path(__file__).with_name("catalogue.json")
DIGEST_PATH = Path(__file__).with_name("catalogue.sha256")


def sources_digest(folder: Path = PATH.parent) -> str:
    """sha256 over every models/*.py (name and bytes, sorted by name): what the catalogue counts."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def flops(model: nn.Module, in_channels: int, image_size: int) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts as 2)."""
    x = torch.empty(1, in_channels, image_size, image_size, device="meta")
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def catalogue(names: list[str] | None = None) -> list[dict]:
    """One dict per registered name, sorted by year: name, family, year, paper, scale, trained_by,
    in_channels, params, design_size, design_classes, flops_32, flops_224.

    Each variant is built with its paper's input channels (`in_channels`: 1 for LeNet-5). Parameters
    are counted at its design scale (`design_size`², `design_classes` classes: 224², 1000 classes if
    it has an ImageNet form, else 32², 10 classes); FLOPs at 32² with 10 classes and at 224² with
    1000, None where the variant is not defined at that size. Models trained by fitting (kNN, Bayes)
    have no trainable parameters and data-dependent FLOPs (None).
    """
    rows = []
    infos = {k: v for k, v in available().items() if names is None or k in names}
    for name, info in sorted(infos.items(), key=lambda kv: (kv[1].year, kv[1].family, kv[0])):
        defined = SIZES_BY_SCALE[info.scale]
        design = 224 if 224 in defined else 32
        with torch.device("meta"):
            model = build(name, CLASSES_AT[design], in_channels=info.in_channels, image_size=design)
        row: dict = dict(name=name, family=info.family, year=info.year, paper=info.paper, scale=info.scale,
                         trained_by=info.trained_by, in_channels=info.in_channels, params=count_params(model),
                         design_size=design, design_classes=CLASSES_AT[design])
        for size, classes in CLASSES_AT.items():
            value = None
            if info.trained_by == "sgd" and size in defined:
                counted = model  # the design-scale build, where the sizes agree
                if size != design:
                    with torch.device("meta"):
                        counted = build(name, classes, in_channels=info.in_channels, image_size=size)
                value = flops(counted, info.in_channels, size)
            row[f"flops_{size}"] = value
        rows.append(row)
    return rows


def dumps(rows: list[dict]) -> str:
    """One row a line, so a change to the zoo is a readable diff."""
    return "[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n"


def write(path: Path = PATH, digest_path: Path = DIGEST_PATH) -> None:
    digest = sources_digest()
    for target, text in ((path, dumps(catalogue())), (digest_path, digest + "\n")):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m models.catalogue --write    (recounts the zoo into models/catalogue.json)")
    write()
    print(f"wrote {PATH}")
