"""Stage `ingest`: a source in, `data/prepared/` out.

`data/prepared/` holds, per split (train, val, test): `{split}_images.npy` (uint8 NHWC, read back
memory-mapped) and `{split}_labels.npy` (int64); `meta.json` (source, classes, counts and a
sha256 per split, one sha256 over all); `manifest.csv` (every source file, its hash and outcome).

How it runs:
1. the source yields records in a fixed order; worker processes decode, convert and resize them
   in batches (`tasks.decode`), and the good images stream into one scratch file;
2. labels and splits are settled (paths of a folder tree, a stratified carve with a fixed seed);
3. one sequential pass over the scratch file writes the split files.
Memory holds a few batches of pixels at a time, whatever the dataset's size (plus one small
manifest entry per source file). Everything is written inside a temporary folder that replaces
`data/prepared/` only when complete.

Bad input: a file that cannot be used (corrupt, truncated, empty, not an image, over
`data.max_image_pixels`, a symlink or archive member leaving the dataset, a label naming no class)
is quarantined under `data.on_bad_file: skip` (listed in manifest.csv and the summary) or stops the
run under `fail`; either way the message names the file and the reason, and a stop is a `DataError`
(exit code 2). A class left with no usable images stops the run naming it, unless
`data.on_empty_class: drop` (then it is listed in the manifest and a warning line says so). Junk (.DS_Store, __MACOSX/, hidden files) is ignored and
listed, never an error. A dataset with fewer than two classes is always an error.

Hashes: a split's sha256 covers its image bytes then its int64 label bytes (C order); `data_sha256`
covers the classes, the image shape and every split's hash.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from tasks.decode import GRAY_MODES, decode_batch, worker_init
from tasks.errors import DataError
from tasks.files import atomic_dir, write_json
from tasks.layout import Layout
from tasks.readers import SPLITS, data_sha256
from tasks.params import DataParams, Params
from tasks.sources import Entry, Record, Refusal, Source, open_source, resolve_tree

MANIFEST_FIELDS = ("path", "outcome", "reason", "label", "split", "index", "sha256", "bytes", "width", "height", "mode")
_SCRATCH = ".decoded.u8"
_BLOCK_BYTES = 8 << 20  # scratch read per step when writing the split files


# ---------------------------------------------------------------- the stage


def ingest(params: Params, layout: Layout) -> dict:
    data = params.data
    started = time.perf_counter()
    source = open_source(data, layout.root)
    decode_channels = data.channels or source.channels or 3
    with atomic_dir(layout.prepared) as tmp:
        scratch = tmp / _SCRATCH
        rows, gray = _decode_all(source, data, decode_channels, scratch)
        classes = _settle_labels(source, data, rows)
        _limit_per_class(rows, data.limit_per_class)
        ok = [r for r in rows if r.outcome == "ok"]
        code_of = {name: i for i, name in enumerate(classes)}
        labels = np.array([code_of[r.label] for r in ok], dtype=np.int64)
        split_of = assign_splits(labels, [r.split for r in ok], len(classes), data.test_fraction,
                                 data.val_fraction, data.split_seed)
        positions = np.array([r.pos for r in ok], dtype=np.int64)
        channels = data.channels or source.channels or (1 if gray[positions].all() else 3)
        splits = _write_splits(tmp, scratch, decode_channels, channels, data.image_size, positions, labels,
                               split_of, len(classes))
        scratch.unlink()
        counters = [0, 0, 0]
        for row, code in zip(ok, split_of.tolist()):
            row.split, row.index = SPLITS[code], counters[code]
            counters[code] += 1
        meta = {
            "source": source.info,
            "classes": classes,
            "num_classes": len(classes),
            "image_size": data.image_size,
            "channels": channels,
            "layout": "NHWC uint8; resized with PIL bicubic (antialiased when shrinking)",
            "splits": splits,
            "data_sha256": data_sha256(classes, data.image_size, channels, splits),
        }
        write_json(tmp / "meta.json", meta)
        _write_manifest(tmp / "manifest.csv", rows)
    bad = [r for r in rows if r.outcome == "bad"]
    return {
        "source": source.kind,
        "num_classes": len(classes),
        "image_size": data.image_size,
        "channels": channels,
        "counts": {name: s["count"] for name, s in splits.items()},
        "bad_files": len(bad),
        "ignored_files": sum(r.outcome == "ignored" for r in rows),
        "quarantined": [f"{r.path}: {r.reason}" for r in bad[:20]],
        "data_sha256": meta["data_sha256"],
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---------------------------------------------------------------- decoding


def _decode_all(source: Source, data: DataParams, channels: int, scratch: Path) -> tuple[list[Entry], np.ndarray]:
    """Decode every record into `scratch` (raw uint8, source order); one manifest entry per item.
    Also returns, per decoded image, whether its source was grayscale."""
    rows: list[Entry] = []
    gray = bytearray()
    with open(scratch, "wb") as out, contextlib.closing(_decoded(source.items, data, channels)) as decoded:
        for batch, images, infos in decoded:
            out.write(np.ascontiguousarray(images).tobytes())
            for item, info in zip(batch, infos):
                if isinstance(item, Refusal):
                    row = Entry(item.name, "bad" if item.bad else "ignored", item.reason)
                else:
                    row = Entry(item.name, "ok" if info["ok"] else "bad", info.get("reason", ""), item.label,
                                item.split, None, info.get("sha256", ""), info.get("bytes"), info.get("width"),
                                info.get("height"), info.get("mode", ""), file=True)
                    if info["ok"]:
                        row.pos = len(gray)
                        gray.append(info["mode"] in GRAY_MODES)
                if row.outcome == "bad" and not (source.tree and row.file):
                    _bad(data, row)  # a tree's file may yet turn out to lie outside the tree: judged later
                rows.append(row)
    return rows, np.frombuffer(bytes(gray), dtype=np.bool_)


def _decoded(items: Iterator[list[Record | Refusal]], data: DataParams, channels: int
             ) -> Iterator[tuple[list, np.ndarray, list[dict]]]:
    """(batch, good images, one info per item) in source order; decoded by a pool of processes."""
    args = (data.image_size, channels, data.max_image_pixels)

    def payloads(batch: list) -> list:
        return [item.payload for item in batch if isinstance(item, Record)]

    def aligned(batch: list, images: np.ndarray, infos: list[dict]):
        it = iter(infos)
        return batch, images, [None if isinstance(item, Refusal) else next(it) for item in batch]

    items = iter(items)
    try:
        yield from _decoded_from(items, data, args, payloads, aligned)
    finally:  # a failure stops the source (closes its files) at once
        getattr(items, "close", lambda: None)()


def _decoded_from(items, data: DataParams, args: tuple, payloads, aligned):
    head = list(itertools.islice(items, 2))
    workers = data.workers or _cpu_count()
    if workers <= 1 or len(head) < 2:  # one batch: not worth starting processes
        for batch in itertools.chain(head, items):
            yield aligned(batch, *decode_batch(payloads(batch), *args))
        return
    pool = _pool(workers)
    try:
        pending: deque = deque()
        for batch in itertools.chain(head, items):
            pending.append((batch, pool.apply_async(decode_batch, (payloads(batch), *args))))
            if len(pending) > 2 * workers:
                batch, result = pending.popleft()
                yield aligned(batch, *result.get())
        while pending:
            batch, result = pending.popleft()
            yield aligned(batch, *result.get())
        pool.close()  # done: let the workers finish and exit
    except BaseException:
        pool.terminate()  # failed or abandoned: stop the workers at once
        raise
    finally:
        pool.join()


def _pool(workers: int):
    """Workers need nothing but numpy and PIL (`tasks.decode`). A forked worker would inherit the
    parent's memory, torch and all where the parent trains (the flow): each of them counted ~400 MB
    resident. So on Linux they fork from a fresh server that has imported `tasks.decode` alone (~40 MB
    each); elsewhere they are spawned."""
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tasks.decode"])
    else:
        context = multiprocessing.get_context("spawn")
    return context.Pool(workers, initializer=worker_init)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _bad(data: DataParams, row: Entry) -> None:
    if data.on_bad_file == "fail":
        raise DataError(f"{row.path}: {row.reason} (data.on_bad_file=fail; `skip` quarantines bad files)")


# ---------------------------------------------------------------- labels and splits


def _settle_labels(source: Source, data: DataParams, rows: list[Entry]) -> list[str]:
    """Fill in labels (tree sources), drop what names no class, and fix the class order."""
    where = source.info.get("path", source.kind)
    found: list[str] = []
    if source.tree:
        found = resolve_tree(rows, source.dirs)
        for row in rows:
            if row.outcome == "bad" and row.file:
                _bad(data, row)
    fixed = data.classes or source.classes
    if fixed is not None:
        known = set(fixed)
        listed = ", ".join(fixed[:20]) + (" …" if len(fixed) > 20 else "")
        for row in rows:
            if row.outcome == "ok" and row.label not in known:
                row.drop("bad", f"label {row.label!r} names no class (classes: {listed})")
                _bad(data, row)
    seen = Counter(r.label for r in rows if r.outcome == "ok")
    candidates = list(fixed) if fixed is not None else sorted(set(seen) | set(found))
    classes, empty = [], []
    for name in candidates:
        if seen[name]:
            classes.append(name)
            continue
        empty.append(name)
        rows.append(Entry(f"{name}/" if source.tree else f"class {name}", "bad", "empty class: no usable images"))
    if empty and data.on_empty_class == "fail":
        names = ", ".join(repr(n) for n in empty)
        raise DataError(f"{where}: class{'es' if len(empty) > 1 else ''} {names} ha{'ve' if len(empty) > 1 else 's'} "
                        f"no usable images (an empty folder, or every file in it bad: see the manifest); add images, "
                        f"remove {'them' if len(empty) > 1 else 'it'}, or set data.on_empty_class=drop to train without")
    if empty:
        print(f"warning: {where}: training without class{'es' if len(empty) > 1 else ''} "
              f"{', '.join(repr(n) for n in empty)}: no usable images (data.on_empty_class=drop)", file=sys.stderr)
    if not classes:
        raise DataError(f"{where}: no usable images found"
                        + (" (expected <class>/<image> or train/<class>/<image> folders)" if source.tree else ""))
    if len(classes) == 1:
        raise DataError(f"{where}: only one class ({classes[0]!r}); a classifier needs at least two")
    return classes


def _limit_per_class(rows: list[Entry], limit: int | None) -> None:
    if limit is None:
        return
    kept: Counter = Counter()
    for row in rows:
        if row.outcome != "ok":
            continue
        kept[row.split, row.label] += 1
        if kept[row.split, row.label] > limit:
            row.drop("ignored", f"beyond data.limit_per_class={limit}")


def assign_splits(labels: np.ndarray, hints: list[str | None], num_classes: int, test_fraction: float,
                  val_fraction: float, seed: int) -> np.ndarray:
    """Split code per image (0 train, 1 val, 2 test).

    A split the source has is kept; a missing test split is carved first (stratified,
    `test_fraction`), then a missing val split from what is left of train (`val_fraction`). The two
    carves use separate random streams, so changing `val_fraction` never moves a test image.
    """
    codes = np.array([{"train": 0, "val": 1, "test": 2, None: 0}[h] for h in hints], dtype=np.int8)
    present = set(hints)
    if "test" not in present:
        _carve(codes, labels, num_classes, test_fraction, 2, np.random.default_rng([seed, 2]))
    if "val" not in present:
        _carve(codes, labels, num_classes, val_fraction, 1, np.random.default_rng([seed, 1]))
    return codes


def _carve(codes: np.ndarray, labels: np.ndarray, num_classes: int, fraction: float, to: int,
           rng: np.random.Generator) -> None:
    for c in range(num_classes):
        pool = np.flatnonzero((codes == 0) & (labels == c))
        take = int(round(len(pool) * fraction))
        if take == 0 and len(pool) >= 2:
            take = 1  # every class in every split, where there is anything to give
        codes[rng.permutation(pool)[:take]] = to


# ---------------------------------------------------------------- writing


class _NpyStream:
    """A .npy file written front to back in chunks, with a hash of its pixels."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: str = "|u1"):
        self.fh = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.fh, {"descr": dtype, "fortran_order": False, "shape": shape})
        self.digest = hashlib.sha256()

    def write(self, array: np.ndarray) -> None:
        buf = np.ascontiguousarray(array).tobytes()
        self.fh.write(buf)
        self.digest.update(buf)

    def close(self) -> None:
        self.fh.close()


def _write_splits(tmp: Path, scratch: Path, decode_channels: int, channels: int, size: int, positions: np.ndarray,
                  labels: np.ndarray, split_of: np.ndarray, num_classes: int) -> dict:
    """One sequential pass over the scratch file, writing every split's images; then labels and hashes."""
    per_image = size * size * decode_channels
    streams = {}
    for code, name in enumerate(SPLITS):
        count = int((split_of == code).sum())
        streams[name] = _NpyStream(tmp / f"{name}_images.npy", (count, size, size, channels))
    order = np.argsort(positions, kind="stable")  # scratch order (source order)
    step = max(1, _BLOCK_BYTES // per_image)
    with open(scratch, "rb") as fh:
        for start in range(0, len(order), step):
            chosen = order[start:start + step]
            lo, hi = int(positions[chosen[0]]), int(positions[chosen[-1]]) + 1
            fh.seek(lo * per_image)
            block = np.frombuffer(fh.read((hi - lo) * per_image), np.uint8).reshape(hi - lo, size, size,
                                                                                   decode_channels)
            block = block[positions[chosen] - lo][..., :channels]
            codes = split_of[chosen]
            for code, name in enumerate(SPLITS):
                streams[name].write(block[codes == code])
    splits = {}
    for code, name in enumerate(SPLITS):
        stream = streams[name]
        stream.close()
        split_labels = labels[order][split_of[order] == code]
        np.save(tmp / f"{name}_labels.npy", split_labels)
        stream.digest.update(split_labels.astype("<i8").tobytes())
        splits[name] = {
            "count": int(len(split_labels)),
            "per_class": np.bincount(split_labels, minlength=num_classes).tolist(),
            "sha256": stream.digest.hexdigest(),
        }
    return splits


def _write_manifest(path: Path, rows: Iterable[Entry]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_FIELDS)
        for row in rows:
            writer.writerow(["" if getattr(row, k) is None else getattr(row, k) for k in MANIFEST_FIELDS])
