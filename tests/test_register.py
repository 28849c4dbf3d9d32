"""Register: a real pyfunc in a real (sqlite) MLflow registry; loads in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from registry_fixtures import chdir, shared_state
from tasks import tracking
from tasks.readers import load_prepared
from tasks.ensemble import ensemble
from tasks.promote import promote_version
from tasks.register import best_candidate, candidates, register


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return shared_state(tmp_path_factory, "digits-register")


def test_best_candidate_is_chosen_on_val(state):
    cands = candidates(state.params, state.layout)
    assert {c["name"] for c in cands if c["kind"] == "single"} == {"knn", "linear"}
    best = best_candidate(cands)
    assert best["val"]["accuracy"] == max(c["val"]["accuracy"] for c in cands)
    fake = [{"kind": "single", "name": "a", "val": {"accuracy": 0.9, "nll": 0.3}, "test": {"accuracy": 0.99}},
            {"kind": "ensemble", "name": "e", "val": {"accuracy": 0.95, "nll": 0.3}, "test": {"accuracy": 0.5}}]
    assert best_candidate(fake)["name"] == "e"  # val decides, never test
    fake[1]["val"]["accuracy"] = 0.9
    assert best_candidate(fake)["name"] == "a"  # a tie goes to the single model


def test_register_writes_a_version_with_card_tags_and_alias(state):
    with chdir(state.root):
        summary = register(state.params, state.layout)  # the best on val of knn, linear
    assert summary["served_val_accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert summary["eval_status"] == "passed"
    with chdir(state.root):
        client = tracking.client(state.params)
        mv = client.get_model_version_by_alias("digits-register", "challenger")
    assert str(mv.version) == summary["version"]
    assert "## Metrics" in mv.description and "data sha256" in mv.description and "git commit" in mv.description
    assert mv.tags["zooflow.kind"] == summary["kind"] and mv.tags["zooflow.candidate"] == summary["candidate"]
    assert summary["candidate"] == best_candidate(candidates(state.params, state.layout))["name"]
    assert "zooflow.source_runs" in mv.tags and mv.tags["zooflow.git_commit"]
    assert json.loads((state.layout.register / "registered.json").read_text())["version"] == summary["version"]
    assert mv.tags["zooflow.data_sha256"] == load_prepared(state.layout.prepared).data_sha256


def test_registered_ensemble_loads_at_staging_in_a_fresh_process_and_takes_other_sizes(state):
    with chdir(state.root):
        params = state.with_params("ensemble.method=soft", "register.candidates=ensemble")
        ensemble(params, state.layout)
        summary = register(params, state.layout)
    assert summary["kind"] == "ensemble" and set(summary["members"]) <= {"knn", "linear"}
    with chdir(state.root):
        card = tracking.client(state.params).get_model_version("digits-register", summary["version"]).description
    assert "gain over the best single member" in card and "soft voting: equal weights" in card
    # the served ensemble reproduces the ensemble stage's val accuracy from saved logits
    assert summary["served_val_accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    with chdir(state.root):
        promote_version(state.params, "digits-register", summary["version"], "staging")
    data = load_prepared(state.layout.prepared)
    images, labels = data.split("test")
    np.save(state.root / "test_images.npy", np.asarray(images[:60]))
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, mlflow, torch
        import torch.nn.functional as F
        mlflow.set_tracking_uri({tracking.tracking_uri(state.params)!r})
        model = mlflow.pyfunc.load_model("models:/digits-register@staging")
        x = np.load("test_images.npy")
        # raw images of another size and with 3 channels: 24 x 24 RGB
        big = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=(24, 24), mode="bilinear")
        big = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
        out = model.predict(np.ascontiguousarray(big))
        same = model.predict(x)
        print(json.dumps({{"big": out["label"].tolist(), "same": same["label"].tolist(),
                           "names": same["class_name"].tolist()[:3], "p": same["probabilities"].iloc[0],
                           "tasks": sys.modules["tasks.serving"].__file__}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=state.root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    truth = labels[:60]
    assert np.mean(np.array(result["same"]) == truth) > 0.9
    assert np.mean(np.array(result["big"]) == truth) > 0.8
    assert result["names"] == [data.classes[i] for i in result["same"][:3]]
    assert sum(result["p"]) == pytest.approx(1.0, abs=1e-5)
    assert "code" in result["tasks"]  # the shipped copy, not this checkout
