"""Where images come from: one reader per `data.source` kind.

A source yields, in a fixed order, `Record`s (an image to decode, with its label and split when the
source knows them) and `Refusal`s (a file turned away before decoding: junk, an unsafe path, a label
that names no class). Folder and archive sources leave label and split to `resolve_tree`, which
reads them from the paths once every file has been seen.
"""

from __future__ import annotations

import csv
import gzip
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
JUNK_NAMES = {"Thumbs.db", "desktop.ini", "__MACOSX"}  # besides every hidden (dot) name
MAX_FILE_BYTES = 1 << 30  # a single source file larger than this is refused before it is read
_BATCH_BYTES = 16 << 20  # flush a batch of encoded files at this size


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


@dataclass(slots=True)
class Entry:
    """One line of the manifest: a source file (or a class, or an archive member) and what became of it.

    Slotted: ingest keeps one per source file, so a few hundred bytes each is all the memory that
    grows with the dataset (the pixels stream through a scratch file)."""

    path: str
    outcome: str  # "ok", "bad" (quarantined, or stops the run under on_bad_file=fail) or "ignored"
    reason: str = ""
    label: str | None = None
    split: str | None = None
    index: int | None = None  # row in its split's arrays
    sha256: str = ""
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    mode: str = ""
    file: bool = False  # a file that was read (tree sources take label and split from its path)
    pos: int = -1  # row in the scratch file of decoded images

    def drop(self, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason


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
        source = torchvision_source(kind, path or root / "data" / "raw", data.download)
    elif path is None:
        raise DataError(f"data.source={kind} needs data.path (the {kind} to read)")
    elif not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: not found (data.path for data.source={kind})")
    elif kind == "folder":
        if not path.is_dir():
            raise DataError(f"{path}: not a folder (data.source=folder wants <class>/<image> folders)")
        source = folder_source(path)
    elif kind == "archive":
        source = archive_source(path)
    elif kind == "idx":  # IDX labels are numbers: data.classes names them in order
        source = idx_source(path, classes=data.classes)
    elif kind == "csv":
        source = csv_source(path)
    else:  # pragma: no cover - params forbids it
        raise DataError(f"data.source={kind}: unknown source")
    if data.path:  # as the user wrote it: meta.json stays the same in every clone of the project
        source.info["path"] = data.path
    return source


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


def junk_reason(parts: tuple[str, ...]) -> str | None:
    """Why a path is skipped as junk (macOS/Windows litter, hidden files), or None."""
    for part in parts:
        if part in JUNK_NAMES or part.startswith("._"):
            return f"ignored: {part} (operating-system litter)"
        if part.startswith("."):
            return f"ignored: {part} (hidden)"
    return None


def folder_source(root: Path) -> Source:
    """An ImageFolder tree on disk: `<class>/<image>`, or `train/<class>/<image>` (+ `test/`, `val/`)."""
    root = root.resolve()
    dirs: list[str] = []

    def items() -> Iterator[list[Record | Refusal]]:
        batch: list[Record | Refusal] = []
        for rel, item in _walk(root, dirs):
            batch.append(item)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    return Source("folder", {"kind": "folder", "path": str(root)}, items(), tree=True, dirs=dirs)


def _walk(root: Path, dirs: list[str], rel: PurePosixPath = PurePosixPath()) -> Iterator[tuple[str, Record | Refusal]]:
    """Depth-first, sorted: every entry under `root` as a Record or a Refusal. Symlinks are followed
    only when they stay inside `root`; symlinked folders are never followed."""
    try:
        entries = sorted(os.scandir(root / rel), key=lambda e: e.name)
    except OSError as exc:
        yield str(rel), Refusal(f"{rel}/", f"cannot list folder ({exc.strerror or exc})")
        return
    for entry in entries:
        name = str(rel / entry.name)
        junk = junk_reason((entry.name,))
        if junk:
            yield name, Refusal(name + ("/" if entry.is_dir(follow_symlinks=False) else ""), junk, bad=False)
            continue
        if entry.is_symlink():
            target = Path(os.path.realpath(entry.path))
            if not target.exists():
                yield name, Refusal(name, f"broken symlink (-> {os.readlink(entry.path)})")
            elif not target.is_relative_to(root):
                yield name, Refusal(name, f"symlink points outside the dataset root (-> {target})")
            elif target.is_dir():
                yield name, Refusal(name + "/", "ignored: symlinked folder (not followed)", bad=False)
            else:
                yield name, _file_record(name, target)
            continue
        if entry.is_dir(follow_symlinks=False):
            dirs.append(name)
            yield from _walk(root, dirs, rel / entry.name)
        else:
            yield name, _file_record(name, Path(entry.path))


def _file_record(name: str, path: Path) -> Record | Refusal:
    try:
        st = path.stat()
    except OSError as exc:
        return Refusal(name, f"cannot read file ({exc.strerror or exc})")
    if not stat.S_ISREG(st.st_mode):
        return Refusal(name, "not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        return Refusal(name, f"file of {st.st_size} bytes is over the {MAX_FILE_BYTES >> 20} MiB limit")
    return Record(name, str(path))


def resolve_tree(rows: list[Entry], dirs: list[str]) -> list[str]:
    """Read label and split from the path of each file entry of a folder tree.

    A single wrapping folder (`cifar10/train/...`) is looked through. When the top level holds
    `train/`, `test/`, `val/` (or `training`, `testing`, `valid`, `validation`), files sit at
    `<split>/<class>/.../<image>`; otherwise at `<class>/.../<image>`. Files elsewhere are ignored.
    Returns every class folder name found (with or without usable images).
    """
    files = [(r, PurePosixPath(r.path).parts) for r in rows if r.file]
    folders = [PurePosixPath(d).parts for d in dirs]
    prefix: tuple[str, ...] = ()
    while True:
        depth = len(prefix)
        under = [p for _, p in files if p[:depth] == prefix] + [p for p in folders if p[:depth] == prefix]
        children = {p[depth] for p in under if len(p) > depth}
        if len(children) != 1:
            break
        (child,) = children
        # the only entry is a folder; it wraps the tree unless it is a split or holds images itself (a class)
        holds_files = any(len(p) == depth + 2 for _, p in files if p[:depth + 1] == prefix + (child,))
        if child.lower() in SPLIT_DIRS or holds_files or not any(len(p) > depth + 1 for p in under):
            break
        prefix += (child,)
    depth = len(prefix)
    tops = {p[depth] for _, p in files if p[:depth] == prefix and len(p) > depth + 1}
    tops |= {p[depth] for p in folders if p[:depth] == prefix and len(p) > depth}
    split_mode = any(t.lower() in SPLIT_DIRS for t in tops)
    classes: set[str] = set()
    for p in folders:
        rel = p[depth:] if p[:depth] == prefix else ()
        if split_mode and len(rel) == 2 and rel[0].lower() in SPLIT_DIRS:
            classes.add(rel[1])
        elif not split_mode and len(rel) == 1:
            classes.add(rel[0])
    for row, p in files:
        rel = p[depth:] if p[:depth] == prefix else None
        if split_mode:
            if rel and len(rel) >= 3 and rel[0].lower() in SPLIT_DIRS:
                row.split, row.label = SPLIT_DIRS[rel[0].lower()], rel[1]
            else:
                where = "a class folder" if rel and rel[0].lower() in SPLIT_DIRS else "a train/test/val folder"
                row.label = row.split = None
                row.drop("ignored", f"ignored: not inside {where}")
                continue
        elif rel and len(rel) >= 2:
            row.label = rel[0]
        else:
            row.label = None
            row.drop("ignored", "ignored: not inside a class folder")
            continue
        classes.add(row.label)
    return sorted(classes)


# ---------------------------------------------------------------- archives


def _unsafe(name: str) -> str | None:
    """Why an archive member name is refused: absolute paths and `..` could write outside a target."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "unsafe path in archive (absolute): refused, nothing is extracted"
    if "\\" in name:
        return "unsafe path in archive (backslash separators): refused, nothing is extracted"
    if ".." in PurePosixPath(name).parts:
        return "unsafe path in archive (contains ..): refused, nothing is extracted"
    return None


def archive_source(path: Path) -> Source:
    """A .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz/.zip holding an ImageFolder tree, read member by member
    from the archive stream: nothing is extracted to disk."""
    name = path.name.lower()
    if name.endswith(".zip"):
        reader = _zip_items
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        reader = _tar_items
    elif zipfile.is_zipfile(path):
        reader = _zip_items
    else:
        reader = _tar_items
    dirs: list[str] = []
    info = {"kind": "archive", "path": str(path.resolve()), "bytes": path.stat().st_size}
    return Source("archive", info, _batched(reader(path, dirs)), tree=True, dirs=dirs)


def _batched(items: Iterator[Record | Refusal]) -> Iterator[list[Record | Refusal]]:
    batch: list[Record | Refusal] = []
    size = 0
    for item in items:
        batch.append(item)
        if isinstance(item, Record) and isinstance(item.payload, (bytes, bytearray)):
            size += len(item.payload)
        if len(batch) >= BATCH or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _member(name: str, dirs: list[str], is_dir: bool) -> tuple[str, Refusal | None]:
    clean = name.rstrip("/")
    while clean.startswith("./"):
        clean = clean[2:]
    unsafe = _unsafe(clean)
    if unsafe:
        return clean, Refusal(name, unsafe)
    junk = junk_reason(PurePosixPath(clean).parts)
    if junk:
        return clean, Refusal(name, junk, bad=False)
    if is_dir:
        dirs.append(clean)
    return clean, None


def _tar_items(path: Path, dirs: list[str]) -> Iterator[Record | Refusal]:
    try:
        archive = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .tar/.tar.gz/.tgz/.zip archive ({exc})") from None
    with archive:
        try:
            for member in archive:
                archive.members = []  # tarfile keeps every header it has read; memory must stay flat
                name, refusal = _member(member.name, dirs, member.isdir())
                if refusal:
                    yield refusal
                elif member.isdir():
                    continue
                elif member.issym() or member.islnk():
                    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                    escapes = member.linkname.startswith("/") or target.startswith("..")
                    yield Refusal(name, "symlink points outside the dataset root (-> %s)" % member.linkname
                                  if escapes else f"link in archive (-> {member.linkname}): not followed")
                elif not member.isfile():
                    yield Refusal(name, "not a regular file (device, fifo or other special member)")
                elif member.size > MAX_FILE_BYTES:
                    yield Refusal(name, f"file of {member.size} bytes is over the {MAX_FILE_BYTES >> 20} MiB limit")
                else:
                    yield Record(name, archive.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError, zlib_error()) as exc:
            raise DataError(f"{path}: corrupt or truncated archive ({exc})") from None


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _zip_items(path: Path, dirs: list[str]) -> Iterator[Record | Refusal]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable .zip archive ({exc})") from None
    with archive:
        for info in archive.infolist():
            name, refusal = _member(info.filename, dirs, info.is_dir())
            if refusal:
                yield refusal
                continue
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                yield Refusal(name, "link in archive: not followed")
            elif info.flag_bits & 0x1:
                yield Refusal(name, "encrypted archive member")
            elif info.file_size > MAX_FILE_BYTES:
                yield Refusal(name, f"file of {info.file_size} bytes is over the {MAX_FILE_BYTES >> 20} MiB limit")
            else:
                try:
                    yield Record(name, archive.read(info))
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib_error()) as exc:
                    yield Refusal(name, f"corrupt archive member ({exc})")


# ---------------------------------------------------------------- IDX (MNIST format)

_IDX_TYPES = {0x08: np.uint8}


def idx_source(path: Path, kind: str = "idx", classes: list[str] | None = None, info: dict | None = None) -> Source:
    """MNIST-format files: `<prefix>-images-idx3-ubyte[.gz]` with `<prefix>-labels-idx1-ubyte[.gz]`.

    With two pairs, a `train` prefix is the train split and `t10k`/`test` the test split; a folder
    with only one pair is split by `data.test_fraction`.
    """
    pairs = _idx_pairs(path)
    label_sets = {images: _read_idx(labels, ndim=1) for images, labels, _ in pairs}
    values = sorted({int(v) for arr in label_sets.values() for v in np.unique(arr)})
    names = classes or ([str(v) for v in range(max(values) + 1)] if values else [])
    if classes and values and max(values) >= len(classes):
        raise DataError(f"{pairs[0][1]}: label {max(values)} has no name (classes: {', '.join(classes)})")

    def items() -> Iterator[list[Record | Refusal]]:
        for images_path, _, split in pairs:
            labels = label_sets[images_path]
            count = 0
            for start, block in _idx_image_blocks(images_path, len(labels)):
                yield [Record(f"{images_path.name}[{start + i}]", image, names[int(labels[start + i])], split)
                       for i, image in enumerate(block)]
                count += len(block)

    files = {f"{split or 'all'}": [p.name for p in (images, labels)] for images, labels, split in pairs}
    return Source(kind, {"kind": kind, "path": str(path.resolve()), "files": files, **(info or {})}, items(),
                  classes=names, channels=1)


def _idx_pairs(path: Path) -> list[tuple[Path, Path, str | None]]:
    if not path.is_dir():
        raise DataError(f"{path}: data.source=idx wants a folder of *-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz]")
    images = sorted(p for p in path.iterdir() if "idx3-ubyte" in p.name and not p.name.startswith("."))
    if not images:
        raise DataError(f"{path}: no *-images-idx3-ubyte[.gz] file here")
    pairs = []
    for image_file in images:
        label_name = image_file.name.replace("images", "labels").replace("idx3", "idx1")
        candidates = [path / label_name, path / (label_name + ".gz"), path / label_name.removesuffix(".gz")]
        label_file = next((c for c in candidates if c.exists()), None)
        if label_file is None:
            raise DataError(f"{image_file}: no labels file beside it (expected {label_name})")
        prefix = image_file.name.split("-")[0].lower()
        split = "train" if prefix.startswith("train") else "test" if prefix in ("t10k", "test") else None
        pairs.append((image_file, label_file, split))
    if len(pairs) == 1:  # one pair, whatever its name: the whole dataset, split by data.test_fraction
        return [(pairs[0][0], pairs[0][1], None)]
    if len({s for _, _, s in pairs}) < len(pairs):
        raise DataError(f"{path}: several IDX image files for the same split: {', '.join(p.name for p, _, _ in pairs)}")
    return pairs


def _open_maybe_gz(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _idx_header(fh, path: Path, ndim: int) -> tuple[int, ...]:
    head = fh.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'none'})")
    if head[2] not in _IDX_TYPES:
        raise DataError(f"{path}: IDX element type 0x{head[2]:02x} is not unsigned bytes")
    if head[3] != ndim:
        raise DataError(f"{path}: IDX file has {head[3]} dimensions, expected {ndim}")
    dims = fh.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    return struct.unpack(f">{ndim}I", dims)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        with _open_maybe_gz(path) as fh:
            (count,) = _idx_header(fh, path, ndim)
            data = fh.read(count + 1)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable IDX file ({exc})") from None
    if len(data) != count:
        raise DataError(f"{path}: truncated or oversized: header says {count} labels, file holds {len(data)}")
    return np.frombuffer(data, np.uint8)


def _idx_image_blocks(path: Path, expected: int) -> Iterator[tuple[int, np.ndarray]]:
    try:
        with _open_maybe_gz(path) as fh:
            count, rows, cols = _idx_header(fh, path, 3)
            if count != expected:
                raise DataError(f"{path}: {count} images but its labels file has {expected} labels")
            if rows * cols == 0:
                raise DataError(f"{path}: images of {rows}x{cols} pixels")
            per = rows * cols
            for start in range(0, count, BATCH * 4):
                n = min(BATCH * 4, count - start)
                data = fh.read(n * per)
                if len(data) != n * per:
                    raise DataError(f"{path}: truncated: header says {count} images, file ends after "
                                    f"{start + len(data) // per}")
                yield start, np.frombuffer(data, np.uint8).reshape(n, rows, cols)
            if fh.read(1):
                raise DataError(f"{path}: trailing bytes after {count} images")
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable IDX file ({exc})") from None


# ---------------------------------------------------------------- CSV manifest


def csv_source(path: Path) -> Source:
    """A CSV of `path,label` (optional `split` column); paths are relative to the CSV's folder and may
    not leave it."""
    base = path.parent.resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable CSV manifest ({exc})") from None
    if "path" not in header or "label" not in header:
        raise DataError(f"{path}: the first line must be a header with `path` and `label` columns (got {header})")
    col = {name: header.index(name) for name in ("path", "label", "split") if name in header}

    def records() -> Iterator[Record | Refusal]:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            next(reader)
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{path.name}:{line}"
                if len(row) != len(header):
                    yield Refusal(where, f"malformed row: {len(row)} fields, header has {len(header)}")
                    continue
                rel, label = row[col["path"]].strip(), row[col["label"]].strip()
                split = row[col["split"]].strip().lower() if "split" in col else ""
                name = f"{where} {rel}"
                if not label:
                    yield Refusal(name, "no label")
                    continue
                if split and split not in SPLIT_DIRS:
                    yield Refusal(name, f"unknown split {split!r} (train, val or test)")
                    continue
                target = Path(os.path.realpath(base / rel))
                if not target.is_relative_to(base):
                    yield Refusal(name, f"path points outside the manifest's folder (-> {target})")
                    continue
                if not target.exists():
                    yield Refusal(name, "file not found")
                    continue
                item = _file_record(name, target)
                if isinstance(item, Record):
                    item.label, item.split = label, SPLIT_DIRS.get(split)
                yield item

    return Source("csv", {"kind": "csv", "path": str(path.resolve())}, _batched(records()))


# ---------------------------------------------------------------- torchvision datasets

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5"], ["test_batch"], "batches.meta", b"label_names", b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_label_names", b"fine_labels"),
}
_TV_CLASS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def torchvision_source(kind: str, root: Path, download: bool) -> Source:
    """CIFAR-10/100, MNIST, Fashion-MNIST in torchvision's layout under `root`; fetched with
    torchvision's checksummed downloader only when `data.download` is true. CIFAR's pickled batches
    are read with an unpickler that builds nothing but numpy arrays and plain data."""
    if kind.startswith("cifar"):
        folder = _CIFAR[kind][0]
        base = root if root.name == folder else root / folder
        if not base.is_dir():
            _download(kind, root, download, base)
        return _cifar_source(kind, base)
    candidates = [root, root / "raw", root / _TV_CLASS[kind] / "raw"]
    raw = next((c for c in candidates if c.is_dir() and any(c.glob("*idx3-ubyte*"))), candidates[-1])
    if not raw.is_dir() or not any(raw.glob("*idx3-ubyte*")):
        _download(kind, root, download, raw)
    classes = FASHION_MNIST_CLASSES if kind == "fashion_mnist" else [str(i) for i in range(10)]
    return idx_source(raw, kind=kind, classes=classes, info={"torchvision": _TV_CLASS[kind]})


def _download(kind: str, root: Path, download: bool, expected: Path) -> None:
    if not download:
        raise DataError(f"{expected}: no {kind} files here; point data.path at a torchvision root that holds them, "
                        f"or set data.download=true to fetch them")
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(tvd, _TV_CLASS[kind])
    root.mkdir(parents=True, exist_ok=True)
    try:
        if kind.startswith("cifar"):
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        else:
            for train in (True, False):
                cls(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"{kind}: download into {root} failed ({type(exc).__name__}: {exc})") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain Python data; refuses every other global (no code runs)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"{path}: missing")
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a CIFAR batch file ({exc})") from None


def _cifar_source(kind: str, base: Path) -> Source:
    _, train_files, test_files, meta_file, names_key, labels_key = _CIFAR[kind]
    meta = _load_batch(base / meta_file)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if not classes:
        raise DataError(f"{base / meta_file}: no {names_key.decode()} in it")

    def items() -> Iterator[list[Record | Refusal]]:
        for split, files in (("train", train_files), ("test", test_files)):
            for file in files:
                batch = _load_batch(base / file)
                data, labels = batch.get(b"data"), batch.get(labels_key)
                if not isinstance(data, np.ndarray) or labels is None or len(data) != len(labels) \
                        or data.ndim != 2 or data.shape[1] != 3072:
                    raise DataError(f"{base / file}: expected data (N, 3072) and {len(data) if data is not None else 0}"
                                    f" {labels_key.decode()}")
                images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                for start in range(0, len(images), BATCH * 4):
                    yield [Record(f"{file}[{i}]", np.ascontiguousarray(images[i]),
                                  classes[int(labels[i])] if 0 <= int(labels[i]) < len(classes) else str(labels[i]),
                                  split)
                           for i in range(start, min(start + BATCH * 4, len(images)))]

    return Source(kind, {"kind": kind, "path": str(base.resolve()), "torchvision": _TV_CLASS[kind]}, items(),
                  classes=classes, channels=3)
