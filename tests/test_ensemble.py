"""Ensemble from saved logits: voting rules by hand, greedy selection's guarantee, the stage on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.ensemble import ensemble, ensemble_logits, fit_weights, greedy_selection, hard_vote, soft_vote
from tasks import caching
from tasks.evaluate import logits_file, softmax
from tasks.files import save_npy, write_json
from tasks.layout import Layout
from tasks.params import load_params


def _params(tmp_path, *overrides):
    return load_params(tmp_path / "none.yaml", ["train.architectures=[knn,linear,lenet5]", *overrides])


def _members(seed: int, n: int = 200, k: int = 4, m: int = 3, skill=(2.0, 1.0, 0.5)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = []
    for i in range(m):
        z = rng.normal(size=(n, k))
        z[np.arange(n), labels] += skill[i % len(skill)]
        logits.append(z)
    return logits, labels


def test_soft_voting_of_identical_members_equals_the_member():
    logits, labels = _members(0)
    p = softmax(logits[0])
    assert np.allclose(soft_vote(np.stack([p, p, p])), p)
    assert np.array_equal(hard_vote(np.stack([p, p])).argmax(1), p.argmax(1))


def test_hard_vote_by_hand():
    a = np.array([[0.6, 0.4, 0.0]])
    b = np.array([[0.1, 0.9, 0.0]])
    c = np.array([[0.0, 0.7, 0.3]])
    votes = hard_vote(np.stack([a, b, c]))
    assert votes.argmax(1).tolist() == [1]
    assert votes[0, 1] == pytest.approx(2 / 3, abs=1e-5)
    # a tie of votes (1:1) goes to the class with the higher mean probability
    assert hard_vote(np.stack([a, b])).argmax(1).tolist() == [1]


def test_weights_favour_the_better_member():
    logits, labels = _members(1, skill=(3.0, 0.0, 0.0))
    probs = np.stack([softmax(z) for z in logits])
    w = fit_weights(probs, labels)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[0] > 0.8


@pytest.mark.parametrize("seed", range(5))
def test_greedy_never_worse_on_val_than_the_best_member(seed):
    logits, labels = _members(seed, m=5, skill=(1.0, 0.8, 0.6, 1.2, 0.3))
    probs = np.stack([softmax(z) for z in logits])
    counts, trace = greedy_selection(probs, labels, rounds=15)
    best_single = max(float((p.argmax(1) == labels).mean()) for p in probs)
    chosen = soft_vote(probs, counts)
    assert float((chosen.argmax(1) == labels).mean()) >= best_single
    assert trace[0]["val_accuracy"] == best_single  # round 1 picks the best member
    assert counts.sum() >= 1


def test_every_method_and_the_gain(tmp_path):
    logits, labels = _members(3, n=300, m=3, skill=(1.2, 1.0, 0.9))
    test_logits, test_labels = _members(4, n=300, m=3, skill=(1.2, 1.0, 0.9))
    params = _params(tmp_path)
    result = ensemble_logits(["a", "b", "c"], logits, test_logits, labels, test_labels, list("wxyz"), params)
    assert set(result["methods"]) == {"soft", "hard", "weighted", "greedy"}
    best = result["singles"][result["best_single"]]
    for name, r in result["methods"].items():
        assert r["gain_val_accuracy"] == pytest.approx(r["val"]["accuracy"] - best["val"]["accuracy"])
        assert r["gain_test_accuracy"] == pytest.approx(r["test"]["accuracy"] - best["test"]["accuracy"])
    # independent members: the soft vote beats the best one on this toy
    assert result["methods"]["soft"]["gain_val_accuracy"] > 0
    chosen = result["chosen"]
    assert chosen["val"]["accuracy"] == max(r["val"]["accuracy"] for r in result["methods"].values())


def test_stage_reads_saved_logits_and_writes_the_choice(tmp_path):
    layout = Layout(tmp_path)
    (val, vl), (test, tl) = _members(5, n=120), _members(6, n=80)

    def evaluated(v, t):  # what the evaluate stage leaves behind, stamped as the stage stamps it
        def stage(params, layout, arch):
            save_npy(logits_file(layout.eval(arch), "val"), v.astype(np.float32))
            save_npy(logits_file(layout.eval(arch), "test"), t.astype(np.float32))
            save_npy(logits_file(layout.eval(arch), "val", "labels"), vl)
            save_npy(logits_file(layout.eval(arch), "test", "labels"), tl)
            write_json(layout.eval(arch) / "report.json", {"classes": ["q", "r", "s", "t"]})
            return {}
        return stage

    for arch, v, t in zip(["knn", "linear"], val, test):
        caching.run_stage("evaluate", evaluated(v, t), _params(tmp_path), layout, arch, arch=arch)
    summary = ensemble(_params(tmp_path, "ensemble.method=soft"), layout)  # lenet5 has no logits: skipped
    assert summary["method"] == "soft" and set(summary["members"]) == {"knn", "linear"}
    saved = json.loads((layout.ensemble / "members.json").read_text())
    assert saved["classes"] == ["q", "r", "s", "t"] and saved["chosen"]["method"] == "soft"
    assert np.load(layout.ensemble / "val_probs.npy").shape == (120, 4)
    # asking for a member that was never evaluated is a clear error
    from tasks.errors import UserError

    with pytest.raises(UserError, match="lenet5"):
        ensemble(_params(tmp_path, "ensemble.members=[knn,lenet5]"), layout)
    # evaluations made with other evaluate params are not this run's: nothing to combine
    with pytest.raises(UserError, match="no evaluated architecture"):
        ensemble(_params(tmp_path, "evaluate.ece_bins=10"), layout)
