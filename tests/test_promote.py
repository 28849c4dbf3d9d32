"""Promotion: the champion/challenger gate on real registered versions, audit trail, manual step."""

from __future__ import annotations

import pytest

from registry_fixtures import chdir, register_arch, shared_state
from tasks import tracking
from tasks.errors import UserError
from tasks.files import read_json
from tasks.promote import alias_history, format_history, gate, promote, promote_version


def test_gate_rules():
    assert gate(0.9, None, 0.0)[0] is True
    assert gate(0.9, 0.9, 0.0)[0] is False  # a tie never moves staging
    assert gate(0.91, 0.9, 0.0)[0] is True
    assert gate(0.91, 0.9, 0.02)[0] is False
    assert gate(0.95, 0.9, 0.02)[0] is True
    assert gate(0.8, 0.9, 0.0)[0] is False


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return shared_state(tmp_path_factory, "digits-promote")


def test_gate_moves_keeps_and_audits(state):
    acc = {a: read_json(state.layout.eval(a) / "metrics.json")["val"]["accuracy"] for a in ("knn", "linear")}
    worse, better = sorted(acc, key=acc.get)
    assert acc[worse] < acc[better], acc
    p, layout = state.params, state.layout
    with chdir(state.root):
        v1 = register_arch(state, worse)["version"]
        first = promote(p, layout)
        assert first["moved"] and first["staging"] == v1 and "no staging" in first["why"]

        again = register_arch(state, worse)  # the very same model: nothing new is registered
        assert again["version"] == v1 and again["new"] is False and "identical to version" in again["why"]
        v2 = register_arch(state, worse, vote="hard")["version"]  # the same predictions, another model: not better
        second = promote(p, layout)
        assert not second["moved"] and second["staging"] == v1 and second["challenger"] == v2
        assert second["metrics"]["delta"] == 0

        v3 = register_arch(state, better)["version"]
        strict = promote(state.with_params("register.min_delta=0.5"), layout)
        assert not strict["moved"] and "at least 0.5" in strict["why"]
        third = promote(p, layout)
        assert third["moved"] and third["staging"] == v3 and third["previous"] == v1
        assert third["metrics"]["challenger_val_accuracy"] == pytest.approx(acc[better])
        assert third["metrics"]["staging_val_accuracy"] == pytest.approx(acc[worse])

        client = tracking.client(p)
        assert str(client.get_model_version_by_alias("digits-promote", "staging").version) == v3
        assert client.get_model_version("digits-promote", v3).tags["zooflow.staging.since"]
        assert client.get_model_version("digits-promote", v1).tags["zooflow.staging.until"]
        assert client.get_model_version("digits-promote", v2).tags["zooflow.gate.staging"].startswith("keep")

        history = alias_history(p, "digits-promote")
    assert [(e["action"], e.get("from"), e["to"]) for e in history] == [
        ("move", None, v1), ("keep", v1, v1), ("keep", v1, v1), ("move", v1, v3)]
    for e in history:
        assert e["when"] and e["why"] and e["by"] and "min_delta" in e["metrics"]
    assert history[1]["metrics"]["challenger_val_accuracy"] == history[1]["metrics"]["staging_val_accuracy"]
    assert "move" in format_history(history)
    assert (state.layout.register / "promoted.json").exists()


def test_manual_promotion_refuses_bad_versions(state):
    p = state.params
    with chdir(state.root):
        v = register_arch(state, "knn")["version"]
        with pytest.raises(UserError, match="no version 999"):
            promote_version(p, "digits-promote", 999, "production")
        with pytest.raises(UserError, match="no registered model"):
            promote_version(p, "nope", 1, "production")
        with pytest.raises(UserError, match="allowed: staging, production"):
            promote_version(p, "digits-promote", v, "prod")
        client = tracking.client(p)
        client.set_model_version_tag("digits-promote", v, "zooflow.eval_status", "failed")
        with pytest.raises(UserError, match="failed evaluation"):
            promote_version(p, "digits-promote", v, "production")
        client.set_model_version_tag("digits-promote", v, "zooflow.eval_status", "passed")
        moved = promote_version(p, "digits-promote", v, "production")
        assert moved["moved"] and moved["previous"] is None
        again = promote_version(p, "digits-promote", v, "production")
        assert not again["moved"]
        assert str(client.get_model_version_by_alias("digits-promote", "production").version) == v
        history = [e for e in alias_history(p, "digits-promote") if e["alias"] == "production"]
    assert [e["action"] for e in history] == ["move", "keep"] and "manual" in history[0]["why"]


def test_a_challenger_that_fails_evaluation_is_kept_out_and_cannot_be_promoted(state):
    import shutil

    p = state.with_params("register.model_name=digits-broken")  # its own model: no other test's versions
    with chdir(state.root):
        staging_before = register_arch(state, "knn", params=p)["version"]
        assert promote(p, state.layout)["staging"] == staging_before
        v = register_arch(state, "linear", params=p)["version"]
        # break the stored model: the newest bundle in the local artifact store loses its files
        bundles = [m.parent for m in (state.root / "mlartifacts").rglob("manifest.json") if m.parent.name == "bundle"]
        shutil.rmtree(max(bundles, key=lambda b: b.stat().st_mtime))
        result = promote(p, state.layout)
        assert not result["moved"] and result["staging"] == staging_before
        assert "challenger failed evaluation" in result["why"]
        client = tracking.client(p)
        assert client.get_model_version("digits-broken", v).tags["zooflow.eval_status"] == "failed"
        with pytest.raises(UserError, match="failed evaluation"):
            promote_version(p, "digits-broken", v, "staging")
