"""Ingest of the embedded default (digits) and the prepared-data contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import DataError
from tasks.ingest import assign_splits, ingest
from tasks.readers import SPLITS, load_prepared
from tasks.layout import Layout
from tasks.params import load_params


def params_for(tmp_path: Path, *overrides: str):
    return load_params(tmp_path / "missing-params.yaml", list(overrides), check_zoo=False)  # ingest reads `data` only


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    layout = Layout(root)
    summary = ingest(params_for(root), layout)
    return layout, summary


def test_digits_contract(digits):
    layout, summary = digits
    prepared = load_prepared(layout.prepared)
    assert prepared.classes == [str(i) for i in range(10)]
    assert prepared.num_classes == 10 and prepared.image_size == 32 and prepared.channels == 1
    total = 0
    for name in SPLITS:
        images, labels = prepared.split(name)
        assert isinstance(images, np.memmap)
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 1)
        assert labels.dtype == np.int64 and len(labels) == len(images)
        assert set(np.unique(labels)) == set(range(10))
        assert prepared.meta["splits"][name]["count"] == len(labels)
        assert prepared.meta["splits"][name]["per_class"] == np.bincount(labels, minlength=10).tolist()
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + labels.astype("<i8").tobytes())
        assert prepared.meta["splits"][name]["sha256"] == digest.hexdigest()
        total += len(labels)
    assert total == 1797
    counts = summary["counts"]
    assert counts["test"] == pytest.approx(1797 * 0.2, abs=10)
    assert counts["val"] == pytest.approx((1797 - counts["test"]) * 0.1, abs=10)
    assert summary["bad_files"] == 0 and summary["data_sha256"] == prepared.meta["data_sha256"]
    json.dumps(summary)
    images, _ = prepared.split("train")
    assert images.max() == 255 and images.min() == 0
    before = (layout.prepared / "train_images.npy").read_bytes()
    images[0] = 7  # copy-on-write: the consumer may write, the prepared file stays as it was
    assert (layout.prepared / "train_images.npy").read_bytes() == before
    assert len(prepared.manifest) == 1797 and {r["outcome"] for r in prepared.manifest} == {"ok"}
    assert not list(layout.prepared.glob(".*")), "no scratch files left behind"


def test_digits_deterministic(digits, tmp_path):
    layout, _ = digits
    other = Layout(tmp_path)
    ingest(params_for(tmp_path), other)
    for path in sorted(layout.prepared.iterdir()):
        assert path.read_bytes() == (other.prepared / path.name).read_bytes(), path.name


def test_digits_resize_and_channels(tmp_path):
    layout = Layout(tmp_path)
    summary = ingest(params_for(tmp_path, "data.image_size=16", "data.channels=3", "data.limit_per_class=20"), layout)
    prepared = load_prepared(layout.prepared)
    images, labels = prepared.split("train")
    assert images.shape[1:] == (16, 16, 3)
    assert np.array_equal(images[..., 0], images[..., 2])
    assert sum(summary["counts"].values()) == 200


def test_reingest_replaces_atomically(digits, tmp_path):
    layout = Layout(tmp_path)
    ingest(params_for(tmp_path, "data.limit_per_class=10"), layout)
    first = load_prepared(layout.prepared).meta

    def per_class(meta):  # images per class over all splits: data.limit_per_class of each
        return set(np.sum([s["per_class"] for s in meta["splits"].values()], axis=0).tolist())

    assert per_class(first) == {10}
    ingest(params_for(tmp_path, "data.limit_per_class=12"), layout)
    second = load_prepared(layout.prepared).meta
    assert per_class(second) == {12}  # the new data, not the old left in place
    assert second["data_sha256"] != first["data_sha256"]
    assert sorted(p.name for p in tmp_path.joinpath("data").iterdir()) == ["prepared"]  # no temporary folder left
    # a re-ingest that fails half-way leaves the previous prepared data whole
    with pytest.raises(DataError):
        ingest(params_for(tmp_path, "data.source=folder", f"data.path={tmp_path / 'no-such-folder'}"), layout)
    assert load_prepared(layout.prepared).meta == second
    assert sorted(p.name for p in tmp_path.joinpath("data").iterdir()) == ["prepared"]


def test_load_prepared_missing(tmp_path):
    with pytest.raises(DataError, match="no prepared dataset"):
        load_prepared(tmp_path)


def test_assign_splits_keeps_test_fixed_when_val_changes():
    labels = np.repeat(np.arange(3), 50)
    hints = [None] * len(labels)
    a = assign_splits(labels, hints, 3, 0.2, 0.1, seed=7)
    b = assign_splits(labels, hints, 3, 0.2, 0.3, seed=7)
    assert np.array_equal(a == 2, b == 2)
    assert (a == 2).sum() == 30 and (a == 1).sum() == 12
    c = assign_splits(labels, hints, 3, 0.2, 0.1, seed=8)
    assert not np.array_equal(a, c)


def test_assign_splits_respects_source_splits():
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 1])
    hints = ["test", "test", "test", "test", "train", "train", "train", "train", "train", "train"]
    codes = assign_splits(labels, hints, 2, 0.2, 0.25, seed=0)
    assert list(codes[:4]) == [2, 2, 2, 2]
    assert (codes[4:] == 1).sum() == 2  # one per class carved from train


def test_ingest_imports_no_torch(tmp_path):
    """Ingest reads only `data`: with check_zoo=False its process never imports torch (issue 17: the
    CIFAR-10 ingest peaked at 1.6 GB resident when params validation pulled in the zoo)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from pathlib import Path
        from tasks.ingest import ingest
        from tasks.layout import Layout
        from tasks.params import load_params
        params = load_params(Path("none.yaml"), ["data.limit_per_class=5"], check_zoo=False)
        ingest(params, Layout(Path({str(tmp_path)!r})))
        print(sorted(m for m in ("torch", "torchvision", "models") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_decoding_workers_do_not_inherit_the_parents_imports():
    """The flow's process has torch loaded; its decoding workers must start without it."""
    import torch  # noqa: F401  the parent as in the flow

    from tasks import ingest as stage

    pool = stage._pool(2)
    try:
        assert pool.apply(eval, ("'torch' in __import__('sys').modules",)) is False
        assert pool.apply(eval, ("'tasks.decode' in __import__('sys').modules",)) is True
    finally:
        pool.close()
        pool.join()
