"""Evaluate: metrics against hand-computed values, calibration, TTA views, and a real run on digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tasks.evaluate import (calibration, classification_report, confusion, count_flops, nll, softmax,
                            top_k_accuracy, tta_views)

LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [3.0, 0.0, 1.0]])
LABELS = np.array([0, 2, 2, 1])


def test_top_k_by_hand():
    # argmax rows: 0, 1, 2, 0 -> right on rows 0 and 2
    assert top_k_accuracy(LOGITS, LABELS, 1) == 0.5
    # top-2 rows: {0,1}, {1,2}, {2,0}, {0,2} -> label 1 of row 3 is missed
    assert top_k_accuracy(LOGITS, LABELS, 2) == 0.75
    assert top_k_accuracy(LOGITS, LABELS, 5) == 1.0  # k capped at the class count


def test_nll_by_hand():
    probs = softmax(LOGITS)
    expected = -np.mean([math.log(probs[i, y]) for i, y in enumerate(LABELS)])
    assert nll(probs, LABELS) == pytest.approx(expected)
    assert nll(np.eye(3)[[0, 1]], np.array([0, 1])) == pytest.approx(0.0, abs=1e-9)


def test_confusion_and_per_class_by_hand():
    probs = softmax(LOGITS)
    rep = classification_report(probs, LABELS, ["a", "b", "c"])
    assert confusion(LABELS, probs.argmax(1), 3).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert rep["accuracy"] == 0.5
    # class a: predicted twice, right once; class c: predicted once, right once, recall 1/2
    assert rep["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert rep["per_class"]["c"]["precision"] == 1.0 and rep["per_class"]["c"]["recall"] == 0.5
    assert rep["per_class"]["b"]["f1"] == 0.0
    assert rep["confusion_normalized"][2] == [0.0, 0.5, 0.5]


def test_ece_of_a_perfectly_calibrated_toy_is_zero():
    # confidence 0.8 on every row and exactly 80 % right; confidence 1.0 and always right
    rows, labels = [], []
    for i in range(10):
        rows.append([0.8, 0.2])
        labels.append(0 if i < 8 else 1)
    rows += [[0.0, 1.0]] * 5
    labels += [1] * 5
    ece, table = calibration(np.array(rows), np.array(labels), bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert sum(b["count"] for b in table) == 15


def test_ece_by_hand():
    # one bin: confidence 0.9, accuracy 0.5 -> ECE 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    ece, _ = calibration(probs, np.array([0, 1]), bins=5)
    assert ece == pytest.approx(0.4)


def test_tta_views():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert len(tta_views(x, "none", 1)) == 1
    flip = tta_views(x, "flip", 1)
    assert torch.equal(flip[1], x.flip(-1))
    crops = tta_views(x, "multicrop", 1)
    assert len(crops) == 10 and all(c.shape == x.shape for c in crops)
    assert torch.equal(crops[4], x)  # the centre crop of the padded image is the image


def test_flops_of_a_linear_layer():
    model = torch.nn.Linear(10, 3)
    assert count_flops(model, torch.zeros(4, 10)) == 2 * 10 * 3


def test_evaluate_on_digits(tmp_path_factory):
    from registry_fixtures import shared_state

    state = shared_state(tmp_path_factory, "digits-evaluate")
    out = state.layout.eval("linear")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] > 0.85 and metrics["test"]["accuracy"] > 0.85
    assert metrics["val"]["top5"] >= metrics["val"]["accuracy"]
    # NLL and ECE (15 equal-width confidence bins, Guo et al. 2017) recomputed by hand from the saved logits
    logits = np.load(out / "logits/val_logits.npy").astype(np.float64)
    labels = np.load(out / "logits/val_labels.npy")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert metrics["val"]["nll"] == pytest.approx(-np.log(probs[np.arange(len(labels)), labels]).mean(), rel=1e-6)
    conf, right = probs.max(1), probs.argmax(1) == labels
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    ece = sum((bins == b).mean() * abs(right[bins == b].mean() - conf[bins == b].mean()) for b in range(15) if (bins == b).any())
    assert metrics["val"]["ece"] == pytest.approx(ece, rel=1e-6) and ece > 0
    assert "val_tta" in metrics and metrics["val_tta"]["accuracy"] > 0.5
    assert metrics["params"] == 16 * 16 * 10 + 10 and metrics["flops"] == 2 * 256 * 10
    speed = json.loads((out / "speed.json").read_text())
    assert speed["latency_ms"] > 0 and speed["throughput"] > 0 and "speed" not in metrics
    for name in ("logits/val_logits.npy", "logits/test_logits.npy", "logits/val_labels.npy", "plots/confusion_val.png",
                 "plots/confusion_test_normalized.png", "plots/reliability_val.png", "report.json"):
        assert (out / name).exists(), name
    logits = np.load(out / "logits/val_logits.npy")
    labels = np.load(out / "logits/val_labels.npy")
    assert logits.shape == (len(labels), 10)
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(metrics["val"]["accuracy"])
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == state.classes
    assert np.array(report["val"]["confusion"]).sum() == len(labels)
    knn = json.loads((state.layout.eval("knn") / "metrics.json").read_text())
    assert knn["test"]["accuracy"] > 0.9


def test_evaluate_logs_to_the_arch_run(tmp_path_factory):
    from registry_fixtures import chdir, shared_state
    from tasks import tracking
    from tasks.evaluate import evaluate_tracked

    state = shared_state(tmp_path_factory, "digits-evaluate").copy(tmp_path_factory.mktemp("eval-copy") / "p")
    params = state.with_params("evaluate.measure_speed=false")
    with chdir(state.root):
        run_id = tracking.start_run(params, "linear-eval-test")
        summary = evaluate_tracked(params, state.layout, "linear", run_id=run_id)
        run = tracking.client(params).get_run(run_id)
        artifacts = [a.path for a in tracking.client(params).list_artifacts(run_id, "eval")]
    assert run.data.metrics["val_accuracy"] == pytest.approx(summary["val_accuracy"])
    assert {"test_accuracy", "val_top5", "val_nll", "val_ece", "test_macro_f1", "params", "flops"} <= set(run.data.metrics)
    assert "latency_ms" not in run.data.metrics  # speed off
    assert {"eval/metrics.json", "eval/report.json", "eval/confusion_val.png", "eval/reliability_test.png"} <= set(artifacts)
