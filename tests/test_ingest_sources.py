"""Every source kind, on tiny generated trees, archives, IDX files and CIFAR batches."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tasks.sources
from tasks.errors import DataError
from tasks.ingest import ingest
from tasks.readers import load_prepared
from tasks.layout import Layout
from tasks.params import load_params

from imagetree import (idx_arrays, image_bytes, tree_files, write_cifar, write_idx, write_tar, write_tree,
                       write_zip)

ROOT = Path(__file__).resolve().parents[1]
# the shared real datasets sit at ../shared/datasets beside the project (or beside its worktree folder)
SHARED = next((p for p in [*([Path(os.environ["ZOOFLOW_DATASETS"])] if os.environ.get("ZOOFLOW_DATASETS") else []),
                           ROOT.parent / "shared" / "datasets", ROOT.parents[1] / "shared" / "datasets"]
               if p.is_dir()), ROOT.parent / "shared" / "datasets")


def run(root: Path, *overrides: str) -> tuple[dict, object]:
    params = load_params(root / "no-params.yaml", ["data.image_size=8", *overrides], check_zoo=False)
    summary = ingest(params, Layout(root))
    return summary, load_prepared(root / "data" / "prepared")


def prepared_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data" / "prepared").iterdir())}


def test_folder_flat_tree(tmp_path):
    write_tree(tmp_path / "src", tree_files(per_class=10))
    summary, prepared = run(tmp_path, "data.source=folder", "data.path=src")
    assert prepared.classes == ["cat", "dog", "emu"] and prepared.channels == 3
    assert summary["counts"] == {"train": 21, "val": 3, "test": 6}
    images, labels = prepared.split("test")
    assert images.shape == (6, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert prepared.meta["source"]["kind"] == "folder"


def test_folder_split_tree_keeps_its_test_split(tmp_path):
    files = tree_files(per_class=5, splits=("train",)) | tree_files(per_class=2, splits=("test",), seed=1)
    write_tree(tmp_path / "src" / "wrapper", files)  # a single wrapping folder is looked through
    summary, prepared = run(tmp_path, "data.source=folder", "data.path=src")
    assert summary["counts"] == {"train": 12, "val": 3, "test": 6}
    tests = [r for r in prepared.manifest if r["split"] == "test"]
    assert all(r["path"].startswith("wrapper/test/") for r in tests)


def test_folder_with_train_val_test(tmp_path):
    files = (tree_files(per_class=4, splits=("train",)) | tree_files(per_class=2, splits=("valid",), seed=1)
             | tree_files(per_class=3, splits=("test",), seed=2))
    write_tree(tmp_path / "src", files)
    summary, _ = run(tmp_path, "data.source=folder", "data.path=src")
    assert summary["counts"] == {"train": 12, "val": 6, "test": 9}


@pytest.mark.parametrize("name,mode", [("a.tar", "w"), ("a.tar.gz", "w:gz"), ("a.tgz", "w:gz"), ("a.zip", None)])
def test_archives_match_the_folder(tmp_path, name, mode):
    files = tree_files(per_class=6, splits=("train", "test"))
    write_tree(tmp_path / "tree", files)
    run(tmp_path / "from-folder", "data.source=folder", f"data.path={tmp_path / 'tree'}")
    archive = tmp_path / name
    write_zip(archive, files) if mode is None else write_tar(archive, {f"ds/{k}": v for k, v in files.items()}, mode)
    summary, prepared = run(tmp_path / "from-archive", "data.source=archive", f"data.path={archive}")
    assert summary["counts"]["test"] == 18 and summary["bad_files"] == 0
    a, b = prepared_bytes(tmp_path / "from-folder"), prepared_bytes(tmp_path / "from-archive")
    assert {k: v for k, v in a.items() if k.endswith(".npy")} == {k: v for k, v in b.items() if k.endswith(".npy")}
    assert not (tmp_path / "from-archive" / "ds").exists(), "nothing extracted"


def test_idx_gz_and_plain(tmp_path):
    images, labels = idx_arrays(30, classes=3)
    write_idx(tmp_path / "gz", "train", images[:20], labels[:20], gz=True)
    write_idx(tmp_path / "gz", "t10k", images[20:], labels[20:], gz=True)
    write_idx(tmp_path / "plain", "train", images[:20], labels[:20], gz=False)
    write_idx(tmp_path / "plain", "t10k", images[20:], labels[20:], gz=False)
    s1, p1 = run(tmp_path / "a", "data.source=idx", f"data.path={tmp_path / 'gz'}")
    s2, p2 = run(tmp_path / "b", "data.source=idx", f"data.path={tmp_path / 'plain'}")
    assert s1["counts"] == {"train": 17, "val": 3, "test": 10} and p1.channels == 1 and p1.classes == ["0", "1", "2"]
    assert s1["data_sha256"] == s2["data_sha256"]
    test_images, test_labels = p1.split("test")
    assert test_labels.tolist() == labels[20:].tolist()
    expected = np.asarray(Image.fromarray(images[20]).resize((8, 8), Image.Resampling.BICUBIC))
    assert np.array_equal(test_images[0, :, :, 0], expected)


def test_idx_class_names(tmp_path):
    images, labels = idx_arrays(30, classes=3)
    write_idx(tmp_path / "idx", "t10k", images, labels)
    _, prepared = run(tmp_path, "data.source=idx", "data.path=idx", "data.classes=[zero, one, two]")
    assert prepared.classes == ["zero", "one", "two"]
    with pytest.raises(DataError, match="label 2 has no name"):
        run(tmp_path, "data.source=idx", "data.path=idx", "data.classes=[zero, one]")


def test_idx_single_pair_is_carved(tmp_path):
    images, labels = idx_arrays(50, classes=5)
    write_idx(tmp_path / "idx", "t10k", images, labels)
    summary, prepared = run(tmp_path, "data.source=idx", "data.path=idx", "data.image_size=28")
    assert summary["counts"]["test"] == 10 and prepared.image_size == 28


def test_csv_manifest(tmp_path):
    files = tree_files(per_class=6)
    write_tree(tmp_path / "imgs", files)
    lines = ["path,label"] + [f"imgs/{rel},{rel.split('/')[0].upper()}" for rel in files]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    summary, prepared = run(tmp_path, "data.source=csv", "data.path=labels.csv")
    assert prepared.classes == ["CAT", "DOG", "EMU"] and sum(summary["counts"].values()) == 18


def test_csv_manifest_with_split_column(tmp_path):
    files = tree_files(per_class=6)
    write_tree(tmp_path / "imgs", files)
    lines = ["label,path,split"] + [f"{rel.split('/')[0]},imgs/{rel},{'test' if i % 3 == 0 else 'train'}"
                                    for i, rel in enumerate(files)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    summary, _ = run(tmp_path, "data.source=csv", "data.path=labels.csv")
    assert summary["counts"]["test"] == 6


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_torchvision_cifar_from_local_root(tmp_path, kind):
    write_cifar(tmp_path / "tv", kind)
    summary, prepared = run(tmp_path, f"data.source={kind}", "data.path=tv", "data.image_size=32")
    train_n = 60 if kind == "cifar10" else 12
    assert summary["counts"]["test"] == 12 and summary["counts"]["train"] + summary["counts"]["val"] == train_n
    assert prepared.classes == ["class0", "class1", "class2"] and prepared.channels == 3
    images, _ = prepared.split("test")
    assert images.shape == (12, 32, 32, 3)


def test_cifar_pickle_cannot_run_code(tmp_path):
    import pickle

    base = write_cifar(tmp_path / "tv", "cifar10")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (base / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="test_batch: not a CIFAR batch file.*refused"):
        run(tmp_path, "data.source=cifar10", "data.path=tv")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_layout(tmp_path, kind, folder):
    images, labels = idx_arrays(40, classes=10)
    write_idx(tmp_path / "tv" / folder / "raw", "train", images[:30], labels[:30], gz=False)
    write_idx(tmp_path / "tv" / folder / "raw", "t10k", images[30:], labels[30:], gz=True)
    summary, prepared = run(tmp_path, f"data.source={kind}", "data.path=tv", "validate.min_per_class=1")
    assert summary["counts"]["test"] == 10 and prepared.num_classes == 10
    assert prepared.classes[0] == ("0" if kind == "mnist" else "T-shirt/top")


def test_torchvision_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        run(tmp_path, "data.source=cifar10", "data.path=nothing-here")
    assert not (tmp_path / "data").exists()


def test_torchvision_download_uses_checksummed_fetch(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        write_cifar(Path(root), "cifar10")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_fetch)
    summary, _ = run(tmp_path, "data.source=cifar10", "data.path=raw", "data.download=true", "data.image_size=32")
    assert calls and calls[0][2] and summary["counts"]["test"] == 12


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_convert_to_channels(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    files = {f"{c}/{c}{i}.{fmt.lower()}": image_bytes(10 * j + i, mode=mode, fmt=fmt)
             for j, c in enumerate(["a", "b"]) for i in range(5)}
    write_tree(tmp_path / "src", files)
    for channels in (1, 3):
        summary, prepared = run(tmp_path / str(channels), "data.source=folder", f"data.path={tmp_path / 'src'}",
                                f"data.channels={channels}")
        assert summary["bad_files"] == 0 and prepared.channels == channels
        assert prepared.split("train")[0].shape[-1] == channels
    _, own = run(tmp_path / "own", "data.source=folder", f"data.path={tmp_path / 'src'}")
    assert own.channels == (1 if mode in ("L", "LA", "I;16", "1") else 3)


def test_mode_conversion_values():
    from tasks.decode import to_channels

    clear = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert np.asarray(to_channels(clear, 3)).tolist() == [[[255, 255, 255]] * 2] * 2  # transparency over white
    deep = Image.fromarray(np.array([[0, 65535], [257, 32896]], dtype=np.uint16))
    assert np.asarray(to_channels(deep, 1)).tolist() == [[0, 255], [1, 128]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(to_channels(cmyk, 3)).tolist() == [[[255, 0, 0]]]


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks.sources, "BATCH", 4)
    write_tree(tmp_path / "src", tree_files(per_class=10, fmt="JPEG"))
    write_tar(tmp_path / "a.tar", tree_files(per_class=10, fmt="JPEG"))
    for source in ("data.source=folder", f"data.path={tmp_path / 'src'}"), \
            ("data.source=archive", f"data.path={tmp_path / 'a.tar'}"):
        run(tmp_path / "serial", *source, "data.workers=1")
        run(tmp_path / "parallel", *source, "data.workers=2")
        assert prepared_bytes(tmp_path / "serial") == prepared_bytes(tmp_path / "parallel")


def test_same_source_twice_is_byte_identical(tmp_path):
    write_tar(tmp_path / "a.tar.gz", tree_files(per_class=8, splits=("train", "test")), "w:gz")
    run(tmp_path / "one", "data.source=archive", f"data.path={tmp_path / 'a.tar.gz'}")
    run(tmp_path / "two", "data.source=archive", f"data.path={tmp_path / 'a.tar.gz'}")
    assert prepared_bytes(tmp_path / "one") == prepared_bytes(tmp_path / "two")


def test_limit_per_class(tmp_path):
    write_tree(tmp_path / "src", tree_files(per_class=10))
    summary, prepared = run(tmp_path, "data.source=folder", "data.path=src", "data.limit_per_class=4")
    assert sum(summary["counts"].values()) == 12 and summary["ignored_files"] == 18


@pytest.mark.skipif(not (SHARED / "mnist-t10k").exists(), reason="shared MNIST copy not present")
def test_real_mnist_idx(tmp_path):
    summary, prepared = run(tmp_path, "data.source=idx", f"data.path={SHARED / 'mnist-t10k'}", "data.image_size=28")
    assert sum(summary["counts"].values()) == 10_000 and prepared.num_classes == 10 and prepared.channels == 1


def test_exif_orientation_is_applied(tmp_path):
    from tasks.decode import decode_one

    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    image, info = decode_one(buf.getvalue(), 40, 3, 10**6)
    assert (info["width"], info["height"]) == (40, 20)
    upright = np.asarray(Image.open(io.BytesIO(buf.getvalue())).transpose(Image.Transpose.ROTATE_270)
                         .resize((40, 40), Image.Resampling.BICUBIC))
    assert np.abs(image.astype(int) - upright.astype(int)).mean() < 1.0


def test_same_bytes_in_another_clone(tmp_path):
    """A relative data.path resolves against the project: two clones prepare identical files."""
    for clone in ("a", "b"):
        (tmp_path / clone / "raw").mkdir(parents=True)
        write_tar(tmp_path / clone / "raw" / "ds.tar", tree_files(per_class=6))
        run(tmp_path / clone, "data.source=archive", "data.path=raw/ds.tar")
    assert prepared_bytes(tmp_path / "a") == prepared_bytes(tmp_path / "b")
    assert load_prepared(tmp_path / "a" / "data" / "prepared").meta["source"]["path"] == "raw/ds.tar"
