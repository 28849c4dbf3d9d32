"""What the stages read back from each other: the prepared data, the normalisation statistics, the
preprocessing a model was trained with, and a trained model.

Below every stage and imported by several; it imports no stage, and torch only when a model is read
(ingest stays light). `PreparedData` is the data contract:
every stage asks it for `num_classes`, `image_size`, `channels` and the classes, nothing re-derives them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.errors import DataError, UserError
from tasks.files import atomic_dir, read_json, write_json
from tasks.layout import Layout

if TYPE_CHECKING:
    import torch
    from torch import nn

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- the prepared data


@dataclass
class PreparedData:
    """`data/prepared/` read back: `split(name)` gives memory-mapped images and the labels."""

    path: Path
    meta: dict

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def data_sha256(self) -> str:
        return str(self.meta["data_sha256"])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.meta["splits"]:
            raise DataError(f"{self.path}: no split {name!r} (have {', '.join(self.meta['splits'])})")
        # copy-on-write: writable for consumers (torch.from_numpy), while the file itself never changes
        images = np.load(self.path / f"{name}_images.npy", mmap_mode="c")
        labels = np.load(self.path / f"{name}_labels.npy")
        return images, labels

    @cached_property
    def manifest(self) -> list[dict]:
        with open(self.path / "manifest.csv", newline="") as fh:
            return list(csv.DictReader(fh))


def load_prepared(path: str | Path) -> PreparedData:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DataError(f"{path}: no prepared dataset here (meta.json missing); run `zooflow ingest` first")
    return PreparedData(path, read_json(meta_path))


def split_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """A split's hash: its image bytes, then its int64 label bytes (C order), as ingest streams them."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.asarray(labels).astype("<i8").tobytes())
    return digest.hexdigest()


def data_sha256(classes: list[str], image_size: int, channels: int, splits: dict) -> str:
    """One hash for the whole prepared dataset: classes, shape and every split's hash."""
    blob = json.dumps({"classes": classes, "image_size": image_size, "channels": channels,
                       "splits": {name: s["sha256"] for name, s in sorted(splits.items())}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_prepared(path: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str],
                   source: dict | None = None) -> PreparedData:
    """Write in-memory splits ({name: (uint8 NHWC, int64 labels)}) as a prepared dataset, in the format
    `ingest` writes: what benchmarks and tests train on without decoding files."""
    path = Path(path)
    first = next(iter(splits.values()))[0]
    image_size, channels = int(first.shape[1]), int(first.shape[3]) if first.ndim == 4 else 1
    records = {}
    with atomic_dir(path) as tmp:
        for name, (images, labels) in splits.items():
            images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(labels), image_size, image_size, channels)
            labels = np.asarray(labels, dtype=np.int64)
            np.save(tmp / f"{name}_images.npy", images)
            np.save(tmp / f"{name}_labels.npy", labels)
            records[name] = {"count": int(len(labels)),
                             "per_class": np.bincount(labels, minlength=len(classes)).tolist(),
                             "sha256": split_sha256(images, labels)}
        meta = {"source": source or {"kind": "arrays"}, "classes": list(classes), "num_classes": len(classes),
                "image_size": image_size, "channels": channels, "layout": "NHWC uint8", "splits": records,
                "data_sha256": data_sha256(list(classes), image_size, channels, records)}
        write_json(tmp / "meta.json", meta)
    return PreparedData(path, meta)


# --------------------------------------------------------------------------- normalisation


def load_stats(layout: Layout):
    """The normalisation statistics the augment stage wrote; computed from the train split if absent."""
    from tasks.augment import Stats, compute_stats

    path = layout.augment / "stats.json"
    if path.exists():
        return Stats.from_json(read_json(path))
    images, _ = load_prepared(layout.prepared).split("train")
    return compute_stats(images)


def preprocessing(layout: Layout, data: PreparedData) -> dict:
    """The preprocessing every model of this run shares: size, channels, normalisation stats."""
    stats = load_stats(layout)
    return {"image_size": data.image_size, "channels": data.channels,
            "mean": [float(v) for v in stats.mean], "std": [float(v) for v in stats.std]}


# --------------------------------------------------------------------------- trained models


def build_model(arch: str, build_args: dict) -> nn.Module:
    """`models.build` from the record train.json keeps: sizes and the builder's options."""
    import models

    return models.build(arch, num_classes=build_args["num_classes"], in_channels=build_args["in_channels"],
                        image_size=build_args["image_size"], **build_args.get("options", {}))


def read_weights(path: Path, remedy: str) -> dict:
    """A state dict read with `weights_only=True`; a file that is not one (corrupt, truncated, or holding
    pickled code, which is refused) is a one-line error naming it and the reason."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a file can fail to be weights
        text = str(exc).strip()
        if "Weights only load failed" in text:
            reason = "it holds pickled objects, not plain tensors: refused unread"
        else:
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise UserError(f"{path}: not a readable weights file ({reason}); {remedy}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state dict (a {type(state).__name__}); {remedy}")
    return state


def load_trained(layout: Layout, arch: str, device: str | torch.device = "cpu") -> nn.Module:
    """The best-val model of `arch`, in eval mode, rebuilt from train.json and model.pt."""
    out = layout.train(arch)
    if not (out / "model.pt").exists() or not (out / "train.json").exists():
        raise UserError(f"{out}: no trained {arch} here (model.pt or train.json missing); "
                        f"run `zooflow train --arch {arch}` first")
    summary = read_json(out / "train.json")
    model = build_model(arch, summary["model"])
    state = read_weights(out / "model.pt", f"delete {out} and re-run `zooflow train --arch {arch}`")
    try:
        model.load_state_dict(state)  # a fitted model (kNN) takes its data-shaped buffers' saved shapes
    except RuntimeError as exc:
        raise UserError(f"{out / 'model.pt'}: these weights do not fit {arch} as train.json builds it "
                        f"({str(exc).splitlines()[0][:160]}); delete {out} and re-run `zooflow train --arch {arch}`"
                        ) from None
    return model.to(device).eval()
