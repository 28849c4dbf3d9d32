"""The leaderboard: one row per architecture (and the ensemble), in the order the registry chooses.

Rows are sorted by the registry's own rule (`best_candidate`: val accuracy, then val NLL, then a
single model before an ensemble), so rank 1 is the model the register stage takes when it may take
any, and the row it takes is marked `registered` (none when a failed run registers nothing).
Writes `outputs/leaderboard/`: `leaderboard.csv`, `leaderboard.md`, `leaderboard.json` (DVC plots),
`accuracy_vs_params.png` and `accuracy_vs_flops.png` with the Pareto front (no other model is both
smaller and more accurate) marked, every model on them, and `curves.png`, every trained model's val
accuracy by epoch. `format_leaderboard(rows)` is the text the CLI
prints.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from tasks import caching
from tasks.errors import UserError
from tasks.files import atomic_path, read_json, write_json, write_text
from tasks.layout import Layout
from tasks.params import Params

COLUMNS = ("rank", "arch", "family", "year", "val_acc", "test_acc", "val_nll", "val_ece", "params", "flops",
           "latency_ms", "train_seconds", "status", "registry")
REGISTERED = "registered"


# --------------------------------------------------------------------------- what the registry takes


def candidates(params: Params, layout: Layout) -> list[dict[str, Any]]:
    """Every registrable candidate with its val/test metrics: single architectures and the ensemble."""
    out = []
    if params.register.candidates in ("all", "single"):
        for arch in caching.current_evaluations(params, layout, params.train.architectures):
            m = read_json(layout.eval(arch) / "metrics.json")
            out.append({"kind": "single", "name": arch, "members": {arch: 1.0}, "vote": "soft",
                        "val": m["val"], "test": m["test"], "params": m.get("params")})
    ens = layout.ensemble / "members.json"
    if params.register.candidates in ("all", "ensemble") and ens.exists() and caching.ensemble_is_current(params, layout):
        chosen = read_json(ens)["chosen"]
        if len(chosen["weights"]) > 1:
            out.append({"kind": "ensemble", "name": f"ensemble:{chosen['method']}", "members": chosen["weights"],
                        "vote": chosen["vote"], "val": chosen["val"], "test": chosen["test"],
                        "gain_val_accuracy": chosen["gain_val_accuracy"],
                        "gain_test_accuracy": chosen["gain_test_accuracy"]})
    return out


def choice_key(val_acc: float | None, val_nll: float | None, single: bool) -> tuple:
    """Higher is better: val accuracy, then lower val NLL, then a single model (simpler to serve)."""
    return (val_acc if val_acc is not None else -math.inf, -(val_nll if val_nll is not None else math.inf), single)


def best_candidate(cands: list[dict]) -> dict:
    """Chosen on val only (`choice_key`); test is never looked at."""
    if not cands:
        raise UserError("register: nothing to register — no architecture evaluated with this run's inputs "
                        "under outputs/eval/ (run `zooflow evaluate --arch NAME` or `zooflow run` first)")
    return max(cands, key=lambda c: choice_key(c["val"]["accuracy"], c["val"].get("nll"), c["kind"] == "single"))


def _read(path: Path) -> dict:
    try:
        return read_json(path) if path.exists() else {}
    except ValueError:
        return {}


def _info(arch: str) -> tuple[str, int | None]:
    try:
        import models

        info = models.available().get(arch)
    except Exception:  # noqa: BLE001 - the leaderboard still prints without the zoo
        info = None
    return (info.family, info.year) if info else ("?", None)


def arch_row(layout: Layout, arch: str, current: bool) -> dict[str, Any]:
    """One architecture's row; its numbers only when its evaluation is `current` (made by this run's inputs)."""
    metrics = _read(layout.eval(arch) / "metrics.json") if current else {}
    train = _read(layout.train(arch) / "train.json") if current else {}
    family, year = _info(arch)
    val, test = metrics.get("val", {}), metrics.get("test", {})
    if current:
        status = "ok"
    elif layout.eval(arch).exists() or layout.train(arch).exists():
        status = "stale: outputs on disk are from other inputs; re-run"
    else:
        status = "not trained"
    return {
        "arch": arch, "family": family, "year": year,
        "val_acc": val.get("accuracy"), "test_acc": test.get("accuracy"),
        "val_nll": val.get("nll"), "val_ece": val.get("ece"),
        "params": metrics.get("params", train.get("params")), "flops": metrics.get("flops"),
        "latency_ms": _read(layout.eval(arch) / "speed.json").get("latency_ms") if current else None,
        "train_seconds": train.get("train_seconds"), "status": status,
    }


def ensemble_row(params: Params, layout: Layout, rows: list[dict]) -> dict[str, Any] | None:
    summary = _read(layout.ensemble / "members.json")
    chosen = summary.get("chosen")
    if not chosen:
        return None
    members = chosen["weights"]
    by_arch = {r["arch"]: r for r in rows}

    def total(key: str) -> float | None:
        values = [by_arch.get(a, {}).get(key) for a in members]
        return None if any(v is None for v in values) else sum(values)

    return {
        "arch": f"ensemble:{chosen['method']}", "family": "ensemble", "year": None,
        "val_acc": chosen["val"]["accuracy"], "test_acc": chosen["test"]["accuracy"],
        "val_nll": chosen["val"]["nll"], "val_ece": chosen["val"]["ece"],
        "params": total("params"), "flops": total("flops"), "latency_ms": total("latency_ms"),
        "train_seconds": total("train_seconds"), "status": f"ok ({len(members)} members)",
    }


def pareto_front(rows: list[dict], cost: str) -> list[dict]:
    """Rows that no other row beats on both `cost` (lower) and val accuracy (higher)."""
    points = sorted((r for r in rows if r.get(cost) is not None and r.get("val_acc") is not None),
                    key=lambda r: (r[cost], -r["val_acc"]))
    front, best = [], -math.inf
    for r in points:
        if r["val_acc"] > best:
            front.append(r)
            best = r["val_acc"]
    return front


def plot_tradeoff(rows: list[dict], cost: str, label: str, path: Path) -> Path:
    """Val accuracy against `cost`, every model that has both, the Pareto front marked.

    The axis is symmetric-log, so the fitted baselines (kNN, Bayes: 0 trained parameters) sit at 0 on
    it rather than off it; labels are moved apart where they would overlap (adjustText)."""
    points = [r for r in rows if r.get(cost) is not None and r.get("val_acc") is not None]
    if not points:
        return _placeholder(path, f"no model with a val accuracy and {label} in this run")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adjustText import adjust_text

    fig, ax = plt.subplots(figsize=(9, 6))
    front = pareto_front(points, cost)
    on_front = {id(r) for r in front}
    ax.step([r[cost] for r in front], [r["val_acc"] for r in front], where="post", color="red",
            linewidth=1, label="Pareto front", zorder=1)
    labels = []
    for r in points:
        registered = r.get("registry") == REGISTERED
        marker = "*" if r["family"] == "ensemble" else "s" if r[cost] == 0 else "o"
        ax.scatter(r[cost], r["val_acc"], marker=marker, s=120 if marker == "*" else 36, zorder=3,
                   color="red" if id(r) in on_front else "tab:blue", edgecolors="black" if registered else "none")
        text = f"{r['arch']} (registered)" if registered else r["arch"]
        labels.append(ax.text(r[cost], r["val_acc"], text, fontsize=8,
                              fontweight="bold" if registered else "normal"))
    top = max(r[cost] for r in points)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.5, max(10.0, top * 3))
    ax.set_xlabel(f"{label} (symmetric log: 0 for fitted baselines)")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"val accuracy vs {label}: {len(points)} models")
    ax.grid(alpha=0.3)
    ax.legend(handles=[
        plt.Line2D([], [], color="red", linewidth=1, label="Pareto front (red points)"),
        plt.Line2D([], [], marker="o", linestyle="", color="tab:blue", label="trained model"),
        plt.Line2D([], [], marker="s", linestyle="", color="tab:blue", label=f"0 {label}: fitted baseline"),
        plt.Line2D([], [], marker="*", linestyle="", color="tab:blue", markersize=10, label="ensemble"),
    ], loc="lower right", fontsize=8)
    fig.tight_layout()
    adjust_text(labels, ax=ax, arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_curves(layout: Layout, rows: list[dict], path: Path) -> Path:
    """Val accuracy by epoch of every trained model of this run, one line each (the zoo's training curves)."""
    histories = {}
    for row in rows:
        history = layout.train(row["arch"]) / "history.json"
        if row.get("status") == "ok" and row["family"] != "ensemble" and history.exists():
            epochs = [h for h in read_json(history) if h.get("val_acc") is not None]
            if len(epochs) > 1:  # fitted models have one "epoch": no curve
                histories[row["arch"]] = epochs
    if not histories:
        return _placeholder(path, "no model trained over epochs in this run (fitted models have no curve)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    colours = plt.get_cmap("tab20").colors
    for i, (arch, epochs) in enumerate(histories.items()):
        ax.plot([h["epoch"] + 1 for h in epochs], [h["val_acc"] for h in epochs], label=arch,
                color=colours[i % len(colours)], linestyle=("-", "--", ":")[i // len(colours) % 3], linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy")
    ax.set_title("training curves: val accuracy by epoch")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _placeholder(path: Path, text: str) -> Path:
    """A plot file that says why it is empty (DVC expects every declared plot to exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def cell(key: str, value: Any) -> str:
    if value is None:
        return "" if key == "registry" else "-"
    if key in ("val_acc", "test_acc"):
        return f"{100 * value:.2f}%"
    if key in ("val_nll", "val_ece"):
        return f"{value:.3f}"
    if key in ("params", "flops"):
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= size:
                return f"{value / size:.2f}{unit}"
        return str(int(value))
    if key in ("latency_ms", "train_seconds"):
        return f"{value:.1f}" if key == "train_seconds" else f"{value:.2f}"
    return str(value)


def format_leaderboard(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """A fixed-width text table, for the terminal."""
    cells = [[cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def markdown(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def to_csv(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def leaderboard(params: Params, layout: Layout, failures: dict[str, str] | None = None,
                notes: dict[str, str] | None = None) -> list[dict]:
    """Rows for every architecture in params (and the ensemble, if one was made), in the registry's order
    (`choice_key`; then the smaller model), the registry's pick marked.

    `failures` ({arch: reason}) marks architectures whose training or evaluation failed in this run,
    whatever older outputs lie on disk; `notes` ({arch: text}) adds to the status of one that did not
    fail (its explanation failed: its numbers stand)."""
    failures, notes = failures or {}, notes or {}
    current = caching.current_evaluations(params, layout, params.train.architectures)
    rows = [arch_row(layout, arch, arch in current and arch not in failures) for arch in params.train.architectures]
    for row in rows:
        if row["arch"] in failures:
            row["status"] = f"failed: {failures[row['arch']]}"[:200]
        elif row["arch"] in notes:
            row["status"] = f"{row['status']}; {notes[row['arch']]}"[:200]
    extra = ensemble_row(params, layout, rows) if caching.ensemble_is_current(params, layout) else None
    if extra:
        rows.append(extra)
    rows.sort(key=lambda r: (*choice_key(r["val_acc"], r["val_nll"], r["family"] != "ensemble"), -(r["params"] or 0)),
              reverse=True)
    chosen = registry_choice(params, layout, failures)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["registry"] = REGISTERED if row["arch"] == chosen else None
    folder = layout.leaderboard
    write_text(folder / "leaderboard.csv", to_csv(rows))
    write_text(folder / "leaderboard.md", markdown(rows))
    write_json(folder / "leaderboard.json", [{c: row.get(c) for c in COLUMNS} for row in rows])
    plot_tradeoff(rows, "params", "parameters", folder / "accuracy_vs_params.png")
    plot_tradeoff(rows, "flops", "FLOPs per image", folder / "accuracy_vs_flops.png")
    plot_curves(layout, rows, folder / "curves.png")
    return rows


def registry_choice(params: Params, layout: Layout, failures: dict[str, str]) -> str | None:
    """The candidate the register stage will take (its name), or None when the run registers nothing:
    nothing evaluated, or a failure under orchestration.fail_fast."""
    if failures and params.orchestration.fail_fast:
        return None
    try:
        return best_candidate([c for c in candidates(params, layout) if c["name"] not in failures])["name"]
    except UserError:
        return None
