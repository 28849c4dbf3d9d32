"""Tiny generated datasets for the ingest tests: image files, folder trees, archives, IDX, CIFAR batches."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (12, 10), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A small noise image, different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("I;16",):
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def tree_files(classes=("cat", "dog", "emu"), per_class: int = 6, splits: tuple[str, ...] = (), seed: int = 0,
               fmt: str = "PNG") -> dict[str, bytes]:
    """{relative path: bytes} of an ImageFolder tree, optionally under split folders."""
    files = {}
    n = seed * 10_000
    for split in splits or ("",):
        for c in classes:
            for i in range(per_class):
                n += 1
                ext = "png" if fmt == "PNG" else "jpg"
                files[f"{split + '/' if split else ''}{c}/{c}{i:03d}.{ext}"] = image_bytes(n, fmt=fmt)
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def add_tar_symlink(path: Path, name: str, target: str) -> None:
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    n, rows, cols = images.shape
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as fh:
        fh.write(struct.pack(">4B3I", 0, 0, 8, 3, n, rows, cols) + images.astype(np.uint8).tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as fh:
        fh.write(struct.pack(">4BI", 0, 0, 8, 1, n) + labels.astype(np.uint8).tobytes())


def idx_arrays(n: int, classes: int = 3, seed: int = 0, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8), np.arange(n) % classes


def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 12, classes: int = 3) -> Path:
    """Fake CIFAR python batches in torchvision's layout (pickles of numpy arrays, like the real ones)."""
    rng = np.random.default_rng(1)
    if kind == "cifar10":
        base = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": "train" for i in range(1, 6)} | {"test_batch": "test"}
        meta, names_key, labels_key = "batches.meta", b"label_names", b"labels"
    else:
        base = root / "cifar-100-python"
        files = {"train": "train", "test": "test"}
        meta, names_key, labels_key = "meta", b"fine_label_names", b"fine_labels"
    base.mkdir(parents=True)
    with open(base / meta, "wb") as fh:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(classes)]}, fh, protocol=2)
    for name in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(base / name, "wb") as fh:
            pickle.dump({b"data": data, labels_key: [i % classes for i in range(per_batch)],
                         b"batch_label": name.encode()}, fh, protocol=2)
    return base


def snapshot(root: Path) -> set[str]:
    """Every path under root (files, folders, links), relative."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out
