"""The leaderboard: one row per architecture (and the ensemble), sorted by val accuracy.

Writes `outputs/leaderboard/`: `leaderboard.csv`, `leaderboard.md`, `accuracy_vs_params.png` and
`accuracy_vs_flops.png` with the Pareto front (no other model is both smaller and more accurate)
marked. `format_leaderboard(rows)` is the text the CLI prints.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from tasks import caching
from tasks.files import atomic_path, read_json, write_text
from tasks.layout import Layout
from tasks.params import Params

COLUMNS = ("rank", "arch", "family", "year", "val_acc", "test_acc", "val_nll", "val_ece", "params", "flops",
           "latency_ms", "train_seconds", "status")


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


def plot_tradeoff(rows: list[dict], cost: str, label: str, path: Path) -> Path | None:
    points = [r for r in rows if r.get(cost) and r.get("val_acc") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        marker = "*" if r["family"] == "ensemble" else "o"
        ax.scatter(r[cost], r["val_acc"], marker=marker, s=80 if marker == "*" else 30)
        ax.annotate(r["arch"], (r[cost], r["val_acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points, cost)
    ax.step([r[cost] for r in front], [r["val_acc"] for r in front], where="post", color="red",
            linewidth=1, label="Pareto front")
    ax.scatter([r[cost] for r in front], [r["val_acc"] for r in front], s=140, facecolors="none",
               edgecolors="red", linewidths=1.2)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("val accuracy")
    ax.set_title(f"val accuracy vs {label}")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
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
    """Rows for every architecture in params (and the ensemble, if one was made), best val acc first.

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
    rows.sort(key=lambda r: (r["val_acc"] is None, -(r["val_acc"] or 0), r["params"] or 0))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    folder = layout.leaderboard
    write_text(folder / "leaderboard.csv", to_csv(rows))
    write_text(folder / "leaderboard.md", markdown(rows))
    plot_tradeoff(rows, "params", "parameters", folder / "accuracy_vs_params.png")
    plot_tradeoff(rows, "flops", "FLOPs per image", folder / "accuracy_vs_flops.png")
    return rows
