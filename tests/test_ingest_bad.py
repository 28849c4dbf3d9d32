"""Bad input: every case is quarantined (`data.on_bad_file: skip`) or stops the run (`fail`) with a
message naming the file and the reason; never a traceback, never a half-written data/prepared/,
never a file written outside it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from tasks.errors import DataError, UserError
from tasks.ingest import ingest
from tasks.readers import load_prepared
from tasks.layout import Layout
from tasks.params import load_params

from imagetree import add_tar_symlink, image_bytes, snapshot, tree_files, write_tar, write_tree, write_zip

GOOD = tree_files(per_class=5)


def png_truncated() -> bytes:
    data = image_bytes(99, size=(64, 64))
    return data[: len(data) // 2]


def png_corrupt() -> bytes:
    data = bytearray(image_bytes(98, size=(64, 64)))
    data[60:90] = b"\x00" * 30  # inside the compressed pixel data
    return bytes(data)


def jpeg_truncated() -> bytes:
    data = image_bytes(97, size=(64, 64), fmt="JPEG")
    return data[: len(data) // 2]


# case -> (extra files, overrides, path named in the message, reason in the message)
CASES = {
    "corrupt": ({"cat/broken.png": png_corrupt()}, [], "cat/broken.png", "corrupt"),
    "truncated_png": ({"dog/half.png": png_truncated()}, [], "dog/half.png", "truncated"),
    "truncated_jpeg": ({"dog/half.jpg": jpeg_truncated()}, [], "dog/half.jpg", "truncated"),
    "zero_byte": ({"emu/empty.png": b""}, [], "emu/empty.png", "empty file (0 bytes)"),
    "not_an_image": ({"cat/notes.png": b"these are my notes\n"}, [], "cat/notes.png", "not an image"),
    "bomb": ({"cat/huge.png": image_bytes(5, size=(400, 300))}, ["data.max_image_pixels=1000"], "cat/huge.png",
             "400x300 pixels exceeds data.max_image_pixels=1000"),
}


def params(*overrides: str):
    return load_params(Path("/nonexistent/params.yaml"), ["data.image_size=8", *overrides], check_zoo=False)


def setup_project(tmp_path: Path) -> tuple[Path, Layout]:
    project = tmp_path / "project"
    project.mkdir()
    return project, Layout(project)


def assert_untouched(tmp_path: Path, before: set[str], layout: Layout, previous: dict | None = None) -> None:
    """Nothing new anywhere but an untouched (or absent) data/prepared and no temporary leftovers."""
    after = snapshot(tmp_path)
    new = {p for p in after - before if not p.startswith("project/data/prepared")}
    assert new <= {"project/data"}, f"written outside data/prepared: {sorted(new)}"
    leftovers = [p for p in after if os.path.basename(p).startswith(".prepared")]
    assert not leftovers, f"temporary folders left: {leftovers}"
    if previous is None:
        assert not layout.prepared.exists()
    else:
        assert {p.name: p.read_bytes() for p in layout.prepared.iterdir()} == previous


def manifest(layout: Layout) -> list[dict]:
    with open(layout.prepared / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_image_quarantined(tmp_path, case):
    extra, overrides, name, reason = CASES[case]
    write_tree(tmp_path / "src", GOOD | extra)
    _, layout = setup_project(tmp_path)
    summary = ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}", *overrides), layout)
    assert summary["bad_files"] == 1 and sum(summary["counts"].values()) == 15
    [line] = summary["quarantined"]
    assert line.startswith(name) and reason in line
    [row] = [r for r in manifest(layout) if r["outcome"] == "bad"]
    assert row["path"] == name and reason in row["reason"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-previous"])
def test_bad_image_fails_cleanly(tmp_path, case, existing):
    extra, overrides, name, reason = CASES[case]
    write_tree(tmp_path / "src", GOOD | extra)
    _, layout = setup_project(tmp_path)
    previous = None
    if existing:
        ingest(params(), layout)  # digits, from an earlier run
        previous = {p.name: p.read_bytes() for p in layout.prepared.iterdir()}
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as err:
        ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}", "data.on_bad_file=fail", *overrides),
               layout)
    message = str(err.value)
    assert message.startswith(name) and reason in message and "data.on_bad_file=fail" in message
    assert isinstance(err.value, UserError) and err.value.exit_code == 2
    assert_untouched(tmp_path, before, layout, previous)


def test_junk_is_ignored_even_when_failing(tmp_path):
    junk = {".DS_Store": b"\x00\x00\x00\x01Bud1", "cat/.DS_Store": b"x", "__MACOSX/cat/._cat000.png": b"x",
            "dog/.hidden.png": image_bytes(3), ".git/config": b"[core]", "cat/._cat001.png": b"x",
            "Thumbs.db": b"x"}
    write_tree(tmp_path / "src", GOOD | junk)
    _, layout = setup_project(tmp_path)
    summary = ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}", "data.on_bad_file=fail"), layout)
    assert summary["bad_files"] == 0 and sum(summary["counts"].values()) == 15
    ignored = {r["path"] for r in manifest(layout) if r["outcome"] == "ignored"}
    assert {".DS_Store", "cat/.DS_Store", "__MACOSX/", "dog/.hidden.png", ".git/", "Thumbs.db"} <= ignored


def test_junk_in_archive_is_ignored(tmp_path):
    junk = {"__MACOSX/ds/cat/._cat000.png": b"x", "ds/.DS_Store": b"x", "ds/cat/.DS_Store": b"x"}
    archive = write_zip(tmp_path / "a.zip", {f"ds/{k}": v for k, v in GOOD.items()} | junk)
    _, layout = setup_project(tmp_path)
    summary = ingest(params("data.source=archive", f"data.path={archive}", "data.on_bad_file=fail"), layout)
    assert summary["bad_files"] == 0 and summary["ignored_files"] == 3 and sum(summary["counts"].values()) == 15


def test_empty_class_folder(tmp_path, capsys):
    write_tree(tmp_path / "src", GOOD)
    (tmp_path / "src" / "fox").mkdir()
    write_tree(tmp_path / "src", {"gnu/bad.png": b""})  # a class whose only file is bad is empty too
    _, layout = setup_project(tmp_path)
    before = snapshot(tmp_path)
    # By default a class without images stops the run: ten classes asked for are ten classes trained.
    with pytest.raises(DataError, match=r"classes 'fox', 'gnu' have no usable images .* data.on_empty_class=drop"):
        ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}"), Layout(tmp_path / "other"))
    assert not (tmp_path / "other" / "data" / "prepared").exists()
    assert snapshot(tmp_path) - before <= {"other", "other/data"}
    # Opting in drops them, says so, and the manifest keeps listing them.
    summary = ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}", "data.on_empty_class=drop"), layout)
    assert load_prepared(layout.prepared).classes == ["cat", "dog", "emu"]
    assert "fox/: empty class: no usable images" in summary["quarantined"]
    assert "gnu/: empty class: no usable images" in summary["quarantined"]
    assert "training without classes 'fox', 'gnu'" in capsys.readouterr().err
    manifest = (layout.prepared / "manifest.csv").read_text()
    assert "fox/,bad,empty class: no usable images" in manifest


def test_symlink_outside_root(tmp_path):
    write_tree(tmp_path / "src", GOOD)
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes(77))
    os.symlink(secret, tmp_path / "src" / "cat" / "escape.png")
    os.symlink(tmp_path, tmp_path / "src" / "dog" / "up")
    os.symlink(tmp_path / "src" / "cat" / "cat000.png", tmp_path / "src" / "emu" / "inside.png")  # inside: fine
    _, layout = setup_project(tmp_path)
    summary = ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}"), layout)
    assert summary["bad_files"] == 2 and summary["counts"]["train"] + summary["counts"]["val"] + \
        summary["counts"]["test"] == 16
    assert any(q.startswith("cat/escape.png: symlink points outside the dataset root") for q in summary["quarantined"])
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"^cat/escape.png: symlink points outside the dataset root"):
        ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}", "data.on_bad_file=fail"), layout)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_path_traversal(tmp_path, kind):
    files = {f"ds/{k}": v for k, v in GOOD.items()}
    evil = {"../../x.png": image_bytes(1), "/tmp/abs-zooflow-test.png": image_bytes(2), "ds/cat/../../../y.png": b"y",
            "..\\..\\win.png": image_bytes(3)}
    archive = tmp_path / f"a.{kind}"
    write_zip(archive, files | evil) if kind == "zip" else write_tar(archive, files | evil, "w:gz")
    project, layout = setup_project(tmp_path)
    before = snapshot(tmp_path)
    summary = ingest(params("data.source=archive", f"data.path={archive}"), layout)
    assert summary["bad_files"] == 4 and sum(summary["counts"].values()) == 15
    reasons = " | ".join(summary["quarantined"])
    assert "win.png: unsafe path in archive (backslash separators)" in reasons
    assert "../../x.png: unsafe path in archive (contains ..)" in reasons
    assert "/tmp/abs-zooflow-test.png: unsafe path in archive (absolute)" in reasons
    after = snapshot(tmp_path)
    assert {p for p in after - before if not p.startswith("project/data/prepared")} == {"project/data"}
    assert not Path("/tmp/abs-zooflow-test.png").exists()
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"unsafe path in archive"):
        ingest(params("data.source=archive", f"data.path={archive}", "data.on_bad_file=fail"), Layout(tmp_path / "p2"))
    assert snapshot(tmp_path) - before <= {"p2", "p2/data"}


def test_archive_symlink_member(tmp_path):
    archive = write_tar(tmp_path / "a.tar", {f"ds/{k}": v for k, v in GOOD.items()})
    add_tar_symlink(archive, "ds/cat/passwd.png", "../../../../etc/passwd")
    _, layout = setup_project(tmp_path)
    summary = ingest(params("data.source=archive", f"data.path={archive}"), layout)
    assert summary["quarantined"] == ["ds/cat/passwd.png: symlink points outside the dataset root "
                                      "(-> ../../../../etc/passwd)"]


def test_corrupt_archive(tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", GOOD, "w:gz")
    archive.write_bytes(archive.read_bytes()[:-200])
    project, layout = setup_project(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"a.tar.gz: corrupt or truncated archive"):
        ingest(params("data.source=archive", f"data.path={archive}"), layout)
    assert_untouched(tmp_path, before, layout)
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"junk.zip: not a readable .zip archive"):
        ingest(params("data.source=archive", f"data.path={tmp_path / 'junk.zip'}"), layout)


def test_manifest_label_naming_no_class(tmp_path):
    write_tree(tmp_path / "imgs", GOOD)
    rows = ["path,label"] + [f"imgs/{rel},{rel.split('/')[0]}" for rel in GOOD] + ["imgs/cat/cat000.png,dgo"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    _, layout = setup_project(tmp_path)
    overrides = ["data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.classes=[cat, dog, emu]"]
    summary = ingest(params(*overrides), layout)
    [line] = summary["quarantined"]
    assert line.startswith("labels.csv:17 imgs/cat/cat000.png: label 'dgo' names no class (classes: cat, dog, emu)")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"labels.csv:17 imgs/cat/cat000.png: label 'dgo' names no class"):
        ingest(params(*overrides, "data.on_bad_file=fail"), Layout(tmp_path / "p2"))
    assert snapshot(tmp_path) - before <= {"p2", "p2/data"}


def test_csv_rows_outside_and_missing(tmp_path):
    write_tree(tmp_path / "m" / "imgs", GOOD)
    (tmp_path / "outside.png").write_bytes(image_bytes(5))
    rows = (["path,label"] + [f"imgs/{rel},{rel.split('/')[0]}" for rel in GOOD]
            + ["imgs/cat/missing.png,cat", "../outside.png,cat", "imgs/cat/cat000.png,", "a,b,c"])
    (tmp_path / "m" / "labels.csv").write_text("\n".join(rows) + "\n")
    _, layout = setup_project(tmp_path)
    summary = ingest(params("data.source=csv", f"data.path={tmp_path / 'm' / 'labels.csv'}"), layout)
    reasons = " | ".join(summary["quarantined"])
    assert "labels.csv:17 imgs/cat/missing.png: file not found" in reasons
    assert "labels.csv:18 ../outside.png: path points outside the manifest's folder" in reasons
    assert "labels.csv:19 imgs/cat/cat000.png: no label" in reasons
    assert "labels.csv:20: malformed row" in reasons
    assert sum(summary["counts"].values()) == 15


def test_one_class(tmp_path):
    write_tree(tmp_path / "src", {k: v for k, v in GOOD.items() if k.startswith("cat/")})
    _, layout = setup_project(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"src: only one class \('cat'\); a classifier needs at least two"):
        ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}"), layout)
    assert_untouched(tmp_path, before, layout)


def test_no_images_at_all(tmp_path):
    write_tree(tmp_path / "src", {"README.txt": b"hello", ".DS_Store": b"x"})
    _, layout = setup_project(tmp_path)
    with pytest.raises(DataError, match=r"src: no usable images found \(expected <class>/<image>"):
        ingest(params("data.source=folder", f"data.path={tmp_path / 'src'}"), layout)


@pytest.mark.parametrize("source,path,match", [
    ("folder", "nope", "nope: not found"),
    ("archive", "nope.zip", "nope.zip: not found"),
    ("idx", "nope", "nope: not found"),
    ("csv", "nope.csv", "nope.csv: not found"),
])
def test_missing_path(tmp_path, source, path, match):
    with pytest.raises(DataError, match=match):
        ingest(params(f"data.source={source}", f"data.path={path}"), Layout(tmp_path))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_missing_path_param(tmp_path):
    with pytest.raises(DataError, match="data.source=folder needs data.path"):
        ingest(params("data.source=folder"), Layout(tmp_path))


def test_truncated_idx(tmp_path):
    from imagetree import idx_arrays, write_idx

    images, labels = idx_arrays(20)
    write_idx(tmp_path / "idx", "t10k", images, labels, gz=False)
    path = tmp_path / "idx" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    _, layout = setup_project(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated: header says 20 images, file ends after 19"):
        ingest(params("data.source=idx", f"data.path={tmp_path / 'idx'}"), layout)
    assert_untouched(tmp_path, before, layout)
    path.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: IDX file has 1 dimensions, expected 3"):
        ingest(params("data.source=idx", f"data.path={tmp_path / 'idx'}"), layout)
    path.write_bytes(b"hello world, not idx")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: not an IDX file"):
        ingest(params("data.source=idx", f"data.path={tmp_path / 'idx'}"), layout)


@pytest.mark.parametrize("source", ["folder", "csv"])
def test_failure_in_parallel_stops_workers(tmp_path, monkeypatch, capfd, source):
    import multiprocessing
    import signal

    def like_prefect(signum, frame):  # Prefect's flow engine raises on SIGTERM; workers must not inherit it
        raise RuntimeError("SIGTERM reached a handler")

    previous = signal.signal(signal.SIGTERM, like_prefect)

    import tasks.sources

    monkeypatch.setattr(tasks.sources, "BATCH", 2)
    files = GOOD | {"dog/zz-empty.png": b""}
    write_tree(tmp_path / "src", files)
    (tmp_path / "src" / "labels.csv").write_text("path,label\n" + "".join(f"{k},{k.split('/')[0]}\n" for k in files))
    path = tmp_path / "src" / ("labels.csv" if source == "csv" else "")
    _, layout = setup_project(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"dog/zz-empty.png: empty file"):
        ingest(params(f"data.source={source}", f"data.path={path}", "data.on_bad_file=fail", "data.workers=2"),
               layout)
    signal.signal(signal.SIGTERM, previous)
    assert multiprocessing.active_children() == []
    assert "Traceback" not in capfd.readouterr().err
    assert_untouched(tmp_path, before, layout)


def test_messages_tell_truncated_from_not_an_image():
    from tasks.decode import BadImage, decode_one

    for data, reason in [(image_bytes(1)[:40], "corrupt or truncated PNG image"),
                         (image_bytes(1, fmt="JPEG")[:20], "corrupt or truncated JPEG image"),
                         (b"GIF89a\x00", "corrupt or truncated GIF image"),
                         (b"%PDF-1.4 not a picture", "not an image")]:
        with pytest.raises(BadImage, match=reason):
            decode_one(data, 8, 3, 10**6)
