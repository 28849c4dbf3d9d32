"""Leaderboard: rows from eval/train outputs, sorting, Pareto front, files, text."""

from __future__ import annotations

from tasks import caching
from tasks.files import write_json
from tasks.layout import Layout
from tasks.leaderboard import format_leaderboard, leaderboard, pareto_front
from tasks.params import load_params


def test_pareto_front():
    rows = [{"arch": "a", "params": 10, "val_acc": 0.5}, {"arch": "b", "params": 20, "val_acc": 0.4},
            {"arch": "c", "params": 30, "val_acc": 0.9}, {"arch": "d", "params": 5, "val_acc": 0.3}]
    assert [r["arch"] for r in pareto_front(rows, "params")] == ["d", "a", "c"]


def test_leaderboard_files_and_order(tmp_path):
    layout = Layout(tmp_path)
    params = load_params(tmp_path / "none.yaml", ["train.architectures=[knn,linear,lenet5]"])
    def evaluated(acc, n):  # what train and evaluate leave, stamped as the stages stamp it
        def stage(params, layout, arch):
            write_json(layout.eval(arch) / "metrics.json", {
                "val": {"accuracy": acc, "nll": 0.2, "ece": 0.03}, "test": {"accuracy": acc - 0.01},
                "params": n, "flops": 5000 + n})
            write_json(layout.eval(arch) / "speed.json", {"latency_ms": 0.3})
            write_json(layout.train(arch) / "train.json", {"train_seconds": 2.0})
            return {}
        return stage

    keys = {}
    for arch, acc, n in (("knn", 0.95, 0), ("linear", 0.97, 2570)):
        caching.run_stage("evaluate", evaluated(acc, n), params, layout, arch, arch=arch)
        keys[arch] = caching.read_stamp("evaluate", layout, arch)["key"]
    write_json(layout.ensemble / "members.json", {"member_keys": keys, "chosen": {
        "method": "soft", "weights": {"knn": 0.5, "linear": 0.5}, "val": {"accuracy": 0.98, "nll": 0.1, "ece": 0.02},
        "test": {"accuracy": 0.975}}})
    rows = leaderboard(params, layout)
    assert [r["arch"] for r in rows] == ["ensemble:soft", "linear", "knn", "lenet5"]
    assert rows[-1]["status"] == "not trained" and rows[0]["params"] == 2570
    assert rows[1]["family"] == "baselines" and rows[1]["latency_ms"] == 0.3
    for name in ("leaderboard.csv", "leaderboard.md", "accuracy_vs_params.png", "accuracy_vs_flops.png"):
        assert (layout.leaderboard / name).exists(), name
    csv = (layout.leaderboard / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("rank,arch,family") and len(csv) == 5
    text = format_leaderboard(rows)
    assert "linear" in text and "97.00%" in text and "not trained" in text
    # A failed explanation is a note on a model whose numbers stand, not a failure.
    noted = {r["arch"]: r for r in leaderboard(params, layout, notes={"linear": "explain failed: boom"})}
    assert noted["linear"]["status"] == "ok; explain failed: boom" and noted["linear"]["val_acc"] == 0.97
    assert noted["knn"]["status"] == "ok"
    # Outputs made with other evaluate params are another run's: no numbers, no ensemble, a stale status.
    stale = leaderboard(load_params(tmp_path / "none.yaml", ["train.architectures=[knn,linear,lenet5]",
                                                             "evaluate.ece_bins=10"]), layout)
    assert [r["arch"] for r in stale] == ["knn", "linear", "lenet5"]
    assert all(r["val_acc"] is None for r in stale)
    assert stale[0]["status"].startswith("stale: outputs on disk are from other inputs")
