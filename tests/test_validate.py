"""The Great Expectations validation stage, on small digits subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import DataError
from tasks.ingest import ingest
from tasks.layout import Layout
from tasks.params import load_params
from tasks.validate import validate


def params_for(tmp_path: Path, *overrides: str):
    return load_params(tmp_path / "missing-params.yaml", ["data.limit_per_class=50", "validate.min_per_class=3", *overrides],
                       check_zoo=False)  # ingest and validate read `data` and `validate` only


@pytest.fixture
def prepared(tmp_path):
    layout = Layout(tmp_path)
    ingest(params_for(tmp_path), layout)
    return layout


def report(layout: Layout) -> dict:
    return json.loads((layout.validation / "result.json").read_text())


def overwrite(layout: Layout, split: str, index: int, image: np.ndarray) -> None:
    images = np.load(layout.prepared / f"{split}_images.npy", mmap_mode="r+")
    images[index] = image
    images.flush()


def test_clean_dataset_passes(prepared, tmp_path):
    summary = validate(params_for(tmp_path), prepared)
    assert summary["success"] and summary["failed"] == 0 and summary["warnings"] == 0
    assert summary["passed"] == summary["expectations"] > 10
    result = report(prepared)
    assert result["success"] and result["all_expectations_met"]
    assert set(result["checks"]) >= {"no_test_leakage", "min_per_class", "labels_in_class_set", "shapes_and_dtypes"}
    assert (prepared.validation / "data_docs" / "index.html").exists()
    assert list((prepared.validation / "data_docs" / "validations").rglob("*.html"))
    json.dumps(summary)
    page = (prepared.validation / "report.html").read_text()  # the result, offline: nothing fetched
    assert "Data validation: passed" in page and "no_test_leakage" in page
    assert "http" not in page.replace("data_docs/index.html", "") and "<script" not in page


def test_leakage_fails(prepared, tmp_path):
    train = np.load(prepared.prepared / "train_images.npy")
    overwrite(prepared, "test", 3, train[7])
    with pytest.raises(DataError) as err:
        validate(params_for(tmp_path), prepared)
    message = str(err.value)
    assert "no_test_leakage" in message and "split=test, index=3" in message and "split=train, index=7" in message
    result = report(prepared)
    assert not result["success"] and result["blocking_failed"] == ["no_test_leakage"]
    page = (prepared.validation / "report.html").read_text()
    assert "FAILED: no_test_leakage" in page and "split=test, index=3" in page


def test_leakage_as_warning_passes(prepared, tmp_path):
    train = np.load(prepared.prepared / "train_images.npy")
    overwrite(prepared, "test", 3, train[7])
    summary = validate(params_for(tmp_path, "validate.severity={no_test_leakage: warning}"), prepared)
    assert summary["success"] and summary["warning_checks"] == ["no_test_leakage"]


def test_warning_level_check_passes_with_warning(prepared, tmp_path):
    for i in range(10):  # blank images, far above max_constant_fraction=1 %
        overwrite(prepared, "train", i, np.zeros((32, 32, 1), np.uint8) + i)
    summary = validate(params_for(tmp_path), prepared)
    assert summary["success"] and summary["warnings"] == 1 and summary["warning_checks"] == ["near_constant_images"]
    result = report(prepared)
    assert result["success"] and not result["all_expectations_met"] and result["warnings"] == ["near_constant_images"]
    [record] = [r for r in result["expectations"] if r["check"] == "near_constant_images" and not r["success"]]
    assert record["severity"] == "warning"
    assert record["first_offending"][0]["split"] == "train"


def test_starved_class_and_unknown_label_fail(prepared, tmp_path):
    labels = np.load(prepared.prepared / "val_labels.npy")
    labels[labels == 3] = 4  # class 3 vanishes from val
    labels[0] = 42  # and a label that names no class
    np.save(prepared.prepared / "val_labels.npy", labels)
    with pytest.raises(DataError) as err:
        validate(params_for(tmp_path, "validate.min_per_class=2"), prepared)
    message = str(err.value)
    assert "min_per_class" in message and "class_name=3" in message
    assert "labels_in_class_set" in message and "label=42" in message


def test_wrong_shape_fails(prepared, tmp_path):
    with pytest.raises(DataError, match="shapes_and_dtypes"):
        validate(params_for(tmp_path, "data.image_size=16"), prepared)


def test_unknown_check_name_is_a_params_error(tmp_path):
    from tasks.errors import ParamsError

    with pytest.raises(ParamsError, match="validate.severity.*nope.*allowed"):
        params_for(tmp_path, "validate.severity={nope: warning}")


def test_missing_prepared_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="zooflow ingest"):
        validate(params_for(tmp_path), Layout(tmp_path))


def test_leak_between_source_splits_is_caught_end_to_end(tmp_path):
    """The same picture under train/ and test/ of a folder tree: ingest keeps both, validation stops."""
    from imagetree import tree_files, write_tree

    files = tree_files(per_class=12, splits=("train",)) | tree_files(per_class=6, splits=("test",), seed=1)
    files["test/dog/copied.png"] = files["train/cat/cat003.png"]
    write_tree(tmp_path / "src", files)
    layout = Layout(tmp_path / "project")
    p = load_params(tmp_path / "none.yaml", ["data.source=folder", f"data.path={tmp_path / 'src'}",
                                            "data.image_size=8", "validate.min_per_class=1"], check_zoo=False)
    ingest(p, layout)
    with pytest.raises(DataError) as err:
        validate(p, layout)
    message = str(err.value)
    assert "no_test_leakage" in message
    assert "path=test/dog/copied.png" in message and "path=train/cat/cat003.png" in message


def test_duplicates_within_split(prepared, tmp_path):
    train = np.load(prepared.prepared / "train_images.npy")
    for i in range(1, 20):  # 19 of ~360 train images: over 5 % of the split
        overwrite(prepared, "train", i, train[0])
    with pytest.raises(DataError, match="duplicates_within_split"):
        validate(params_for(tmp_path), prepared)
    summary = validate(params_for(tmp_path, "validate.max_duplicate_fraction=0.5"), prepared)
    assert summary["success"] and summary["warnings"] == 0


def test_images_without_labels_fail(prepared, tmp_path):
    labels = np.load(prepared.prepared / "val_labels.npy")
    np.save(prepared.prepared / "val_labels.npy", labels[:-1])
    with pytest.raises(DataError, match="shapes_and_dtypes") as err:
        validate(params_for(tmp_path), prepared)
    assert "expect_column_pair_values_to_be_equal" in str(err.value) and "split=val" in str(err.value)
