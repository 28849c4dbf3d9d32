"""Leaderboard: rows from eval/train outputs, sorting, Pareto front, files, text."""

from __future__ import annotations

from tasks import caching
from tasks.files import write_json
from tasks.layout import Layout
from tasks.leaderboard import best_candidate, candidates, format_leaderboard, leaderboard, pareto_front, plot_tradeoff
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
        "method": "soft", "vote": "soft", "weights": {"knn": 0.5, "linear": 0.5},
        "val": {"accuracy": 0.98, "nll": 0.1, "ece": 0.02}, "test": {"accuracy": 0.975},
        "gain_val_accuracy": 0.01, "gain_test_accuracy": 0.015}})
    rows = leaderboard(params, layout)
    assert [r["arch"] for r in rows] == ["ensemble:soft", "linear", "knn", "lenet5"]
    assert rows[-1]["status"] == "not trained" and rows[0]["params"] == 2570
    assert [r["registry"] for r in rows] == ["registered", None, None, None]
    assert rows[1]["family"] == "baselines" and rows[1]["latency_ms"] == 0.3
    for name in ("leaderboard.csv", "leaderboard.md", "accuracy_vs_params.png", "accuracy_vs_flops.png"):
        assert (layout.leaderboard / name).exists(), name
    csv = (layout.leaderboard / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("rank,arch,family") and len(csv) == 5
    text = format_leaderboard(rows)
    assert "linear" in text and "97.00%" in text and "not trained" in text
    assert text.splitlines()[2].split()[:2] == ["1", "ensemble:soft"] and text.splitlines()[2].endswith("registered")
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


def test_a_tie_on_val_accuracy_ranks_first_what_the_registry_takes(tmp_path):
    """kNN (0 parameters, hard 0/1 probabilities) ties the ensemble on val accuracy: the registry takes the
    ensemble (lower val NLL), and so does rank 1; under fail_fast a failed run marks nothing registered."""
    layout = Layout(tmp_path)
    params = load_params(tmp_path / "none.yaml", ["train.architectures=[knn,linear]"])
    keys = {}
    for arch, nll, n in (("knn", 0.9, 0), ("linear", 0.3, 2570)):
        def stage(params, layout, arch, nll=nll, n=n):
            write_json(layout.eval(arch) / "metrics.json", {"val": {"accuracy": 0.98, "nll": nll, "ece": 0.02},
                                                           "test": {"accuracy": 0.97}, "params": n, "flops": n})
            return {}
        caching.run_stage("evaluate", stage, params, layout, arch, arch=arch)
        keys[arch] = caching.read_stamp("evaluate", layout, arch)["key"]
    write_json(layout.ensemble / "members.json", {"member_keys": keys, "chosen": {
        "method": "greedy", "vote": "soft", "weights": {"knn": 0.3, "linear": 0.7},
        "val": {"accuracy": 0.98, "nll": 0.2, "ece": 0.01}, "test": {"accuracy": 0.975},
        "gain_val_accuracy": 0.0, "gain_test_accuracy": 0.005}})
    rows = leaderboard(params, layout)
    assert [(r["arch"], r["registry"]) for r in rows] == [("ensemble:greedy", "registered"), ("linear", None),
                                                          ("knn", None)]
    assert best_candidate(candidates(params, layout))["name"] == "ensemble:greedy"
    failed = leaderboard(params, layout, {"linear": "diverged"})
    assert all(r["registry"] is None for r in failed)


def test_tradeoff_plots_keep_the_zero_parameter_baselines(tmp_path):
    rows = [{"arch": "knn", "family": "baselines", "params": 0, "val_acc": 0.98},
            {"arch": "bayes", "family": "baselines", "params": 0, "val_acc": 0.9},
            {"arch": "lenet5", "family": "LeNet", "params": 61706, "val_acc": 0.97, "registry": "registered"},
            {"arch": "resnet20", "family": "ResNet", "params": 270000, "val_acc": 0.985}]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        assert plot_tradeoff(rows, "params", "parameters", tmp_path / "p.png").exists()
    finally:
        plt.Figure.savefig = real_savefig
    (ax,) = saved[0].axes
    texts = {t.get_text() for t in ax.texts}
    assert texts == {"knn", "bayes", "lenet5 (registered)", "resnet20"}
    plotted = sorted(float(x) for c in ax.collections for x, _ in c.get_offsets())
    assert plotted[:2] == [0.0, 0.0] and len(plotted) == 4
    assert ax.get_xscale() == "symlog"
