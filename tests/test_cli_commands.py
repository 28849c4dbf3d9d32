"""The commands a user relies on beyond `run`: the manual promotion, the history, the params reference,
and `zooflow run` stopping on bad data with exit code 2 through the Prefect flow."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from flows import cli
from registry_fixtures import chdir, register_arch, shared_state
from tasks.params import reference_markdown
from tests.conftest import REPO
from tests.imagetree import tree_files, write_tree


def zooflow(monkeypatch, capsys, *args: str) -> tuple[int, str, list[str]]:
    """The CLI in this process: (exit code, stdout, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["zooflow", *args])
    code = cli.run_cli()
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return shared_state(tmp_path_factory, "digits-cli")


def test_manual_promotion_to_production_and_the_history(state, monkeypatch, capsys):
    store = ["-S", f"mlflow.tracking_uri=sqlite:///{state.root / 'mlflow.db'}"]
    with chdir(state.root):
        version = register_arch(state, "linear", params=state.params)["version"]
        code, out, err = zooflow(monkeypatch, capsys, "promote", "digits-cli", version, "--to", "production", "--json",
                                 *store)
        assert code == 0, err
        moved = json.loads(out)
        assert moved["moved"] is True and moved["alias"] == "production" and moved["version"] == version
        # without --json: one line; already there: kept, and audited
        code, out, _ = zooflow(monkeypatch, capsys, "promote", "digits-cli", version, "--to", "production", *store)
        assert code == 0 and out.startswith(f"promote: @production is version {version} of digits-cli (kept: ")
        code, _, err = zooflow(monkeypatch, capsys, "promote", "digits-cli", "999", "--to", "production", *store)
        assert code == 2 and err == [f"error: model 'digits-cli' has no version 999; versions: {version}"]
        code, out, _ = zooflow(monkeypatch, capsys, "history", "digits-cli", *store)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert f"production move  v- -> v{version}" in lines[0] and "manual promotion to production" in lines[0]
    assert f"production keep  kept v{version}" in lines[1]


def test_params_reference_is_the_readme_table(project, monkeypatch, capsys):
    code, out, _ = zooflow(monkeypatch, capsys, "params", "--reference")
    assert code == 0 and out.strip() == reference_markdown()
    assert out.strip() in (REPO / "README.md").read_text()


@pytest.mark.slow
def test_run_on_bad_data_stops_with_exit_2_through_the_flow(project, prefect_harness, monkeypatch, capsys):
    """A test image that is also a training image: validation's blocking check fails inside the flow, and
    the user reads the reason, not a Prefect traceback."""
    images = project / "images"
    write_tree(images, tree_files(classes=("cat", "dog"), per_class=6, splits=("train", "test")))
    shutil.copy(images / "train" / "cat" / "cat000.png", images / "test" / "cat" / "leaked.png")
    code, _, err = zooflow(monkeypatch, capsys, "run", "-S", "data.source=folder", "-S", "data.path=images",
                           "-S", "validate.min_per_class=1", "-S", "train.architectures=[knn]")
    assert code == 2, err
    errors = [line for line in err if line.startswith("error:")]  # the rest is Prefect's run log
    assert len(errors) == 1 and errors[0].startswith("error: validation failed: 1 blocking check (report: ")
    assert any("no_test_leakage" in line for line in err)
    assert not any("Traceback" in line for line in err)  # neither ours nor in Prefect's log of the run
    assert not (project / "outputs" / "train").exists()  # nothing trained on bad data
    result = json.loads((project / "reports" / "validation" / "result.json").read_text())
    assert result["blocking_failed"] == ["no_test_leakage"]

    # The data fixed, an architecture that diverges under fail_fast: the run fails with exit 1, after the
    # leaderboard that says which one and why (a failed run must never exit 0 for a scheduler or a script).
    (images / "test" / "cat" / "leaked.png").unlink()
    code, out, err = zooflow(monkeypatch, capsys, "run", "-S", "data.source=folder", "-S", "data.path=images",
                             "-S", "validate.min_per_class=1", "-S", "train.architectures=[knn, linear]",
                             "-S", "train.overrides={linear: {optimizer: {lr: 1000}}}",
                             "-S", "orchestration.fail_fast=true")
    assert code == 1, err
    assert any("linear" in line and "failed: diverged" in line for line in out.splitlines()), out
    assert [line for line in err if line.startswith("error:")][0].startswith("error: the run failed: ")


def test_the_gate_scores_both_versions_on_the_current_val_split(state, tmp_path):
    """After the data changed, staging and challenger are both scored on the new val split, as loaded by
    a service: the numbers in the decision are recomputed here from the served models."""
    import mlflow

    from registry_fixtures import make_params
    from tasks.ingest import ingest
    from tasks.layout import Layout
    from tasks.promote import promote
    from tasks.readers import load_prepared

    p = state.with_params("register.model_name=digits-drift")
    with chdir(state.root):
        v1 = register_arch(state, "knn", params=p)["version"]
        assert promote(p, state.layout)["staging"] == v1
        v2 = register_arch(state, "linear", params=p)["version"]
    fresh = Layout(tmp_path)
    ingest(make_params(tmp_path, "data.split_seed=5"), fresh)  # the same digits, another val split
    images, labels = load_prepared(fresh.prepared).split("val")
    old_labels = load_prepared(state.layout.prepared).split("val")[1]
    assert len(labels) != len(old_labels) or not np.array_equal(labels, old_labels)
    with chdir(state.root):
        result = promote(p, fresh)
        mlflow.set_tracking_uri(p.mlflow.tracking_uri)
        for version, key in ((v1, "staging_val_accuracy"), (v2, "challenger_val_accuracy")):
            served = mlflow.pyfunc.load_model(f"models:/digits-drift/{version}")
            accuracy = float(np.mean(np.asarray(served.predict(np.ascontiguousarray(images))["label"]) == labels))
            assert result["metrics"][key] == pytest.approx(accuracy), key
    assert result["metrics"]["val_n"] == len(labels)
    assert result["moved"] == (result["metrics"]["challenger_val_accuracy"] > result["metrics"]["staging_val_accuracy"])
