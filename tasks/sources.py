"""Where images come from: one reader per `data.source` kind.

A source yields, in a fixed order, `Record`s (an image to decode, with its label and split when the
source knows them) and `Refusal`s (a file turned away before decoding: junk, an unsafe path, a label
that names no class). Folder and archive sources leave label and split to `resolve_tree`, which
reads them from the paths once every file has been seen.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import posixpath
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tasks.errors import DataError
from tasks.params import DataParams

BATCH = 512
SPLIT_DIRS = {"train": "train", "training": "train", "test": "test", "testing": "test",
              "val": "val", "valid": "val", "validation": "val"}
JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX", ".ipynb_checkpoints"}


@dataclass
class Record:
    name: str  # where it came from, for messages and the manifest
    payload: Any  # encoded bytes, a file path (str), or a uint8 HxW / HxWxC array
    label: str | None = None  # class name, when the source knows it
    split: str | None = None  # "train" / "val" / "test", when the source says


@dataclass
class Refusal:
    name: str
    reason: str
    bad: bool = True  # False: ignored junk (.DS_Store, hidden files), never stops a run


@dataclass
class Source:
    kind: str
    info: dict  # what meta.json records as "source"
    items: Iterator[list[Record | Refusal]]
    classes: list[str] | None = None  # fixed class order; None: the sorted labels seen
    channels: int | None = None  # the source's own channel count, when it has one
    tree: bool = False  # labels and splits come from the paths (folder, archive)
    dirs: list[str] = field(default_factory=list)  # folders seen, for empty-class detection (tree sources)


def open_source(data: DataParams, root: Path) -> Source:
    """The reader for `data.source`; `root` is the project folder that relative paths start from."""
    kind = data.source
    if kind == "digits":
        return digits_source()
    path = Path(data.path) if data.path else None
    if path is not None and not path.is_absolute():
        path = root / path
    if kind in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
        from tasks import torchvision_sources

        return torchvision_sources.open_torchvision(kind, path or root / "data" / "raw", data.download)
    if path is None:
        raise DataError(f"data.source={kind} needs data.path (the {kind} to read)")
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: not found (data.path for data.source={kind})")
    if kind == "folder":
        if not path.is_dir():
            raise DataError(f"{path}: not a folder (data.source=folder wants <class>/<image> folders)")
        return folder_source(path)
    if kind == "archive":
        return archive_source(path)
    if kind == "idx":
        return idx_source(path)
    if kind == "csv":
        return csv_source(path)
    raise DataError(f"data.source={kind}: unknown source")  # pragma: no cover - params forbids it


# ---------------------------------------------------------------- digits


def digits_source() -> Source:
    """scikit-learn's 1,797 8x8 handwritten digits, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    names = [str(n) for n in digits.target_names]

    def items() -> Iterator[list[Record | Refusal]]:
        for start in range(0, len(images), BATCH * 4):
            yield [
                Record(f"digits[{i}]", images[i], names[int(digits.target[i])])
                for i in range(start, min(start + BATCH * 4, len(images)))
            ]

    return Source("digits", {"kind": "digits", "name": "sklearn.datasets.load_digits", "images": len(images)},
                  items(), classes=names, channels=1)


# ---------------------------------------------------------------- folder trees


def resolve_tree(rows: list[dict], dirs: list[str]) -> list[str]:
    """Read label and split from each path of a folder tree; returns the class folders that hold no file."""
    raise NotImplementedError
