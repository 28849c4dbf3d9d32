"""From an experiment's measured runs to its evidence: mean ± sd per variation, the verdict of every
check, the plot, verdict.md and the lab's page (docs/experiments.md).

The rule (`decide`): a check compares a measured effect with a threshold in the direction the claim
expects. With e the effect (a difference of means, or the mean of per-seed ratios), s its spread (the
pooled sample standard deviation of the two variations, sqrt((sd_a^2 + sd_b^2) / 2), or the sd of the
ratios) and k the rule's multiplier (2 unless the experiment says otherwise):

    holds                      e - k s > than   (e + k s < than when the claim expects "less")
    does not hold              e + k s <= than  (e - k s >= than): the opposite, or no effect at all
    inconclusive at this size  otherwise: the interval e ± k s straddles the threshold

The spread is the seeds' standard deviation, not the standard error of the mean: a claim holds only
when its effect stands out of the run-to-run scatter itself. An experiment's verdict: every counted
check holds -> holds; any counted check does not hold -> does not hold; else inconclusive at this size.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from tasks.files import atomic_path

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this size"


# --------------------------------------------------------------------------- numbers


def summary(values: list[float]) -> dict[str, Any]:
    """mean, sample sd (0 for a single value), n and the values themselves (non-finite ones dropped)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not kept:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    sd = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return {"mean": statistics.fmean(kept), "sd": sd, "n": len(kept), "values": kept}


def series_summary(curves: list[list[float]]) -> dict[str, list[float]]:
    """Per-position mean and sd of curves (epochs, blocks) over seeds, as long as the shortest curve."""
    length = min((len(c) for c in curves), default=0)
    columns = [[c[i] for c in curves] for i in range(length)]
    return {"mean": [statistics.fmean(col) for col in columns],
            "sd": [statistics.stdev(col) if len(col) > 1 else 0.0 for col in columns]}


def decide(effect: float | None, spread: float, expect: str, than: float, k: float = 2.0) -> str:
    """The rule of the module doc: holds, does not hold, or inconclusive at this size."""
    if effect is None or not math.isfinite(effect):
        return INCONCLUSIVE
    low, high = effect - k * spread, effect + k * spread
    if expect == "greater":
        return HOLDS if low > than else FAILS if high <= than else INCONCLUSIVE
    return HOLDS if high < than else FAILS if low >= than else INCONCLUSIVE


def effect_of(a: list[float], b: list[float] | None, compare: str) -> tuple[float | None, float]:
    """(effect, spread) of values `a` against `b` (per seed, paired by position) or, without `b`, of `a`
    alone. difference: mean(a) - mean(b), pooled sd; ratio: mean of a_i / b_i, sd of the ratios."""
    if not a or (b is not None and not b):
        return None, 0.0
    if b is None:
        s = summary(a)
        return s["mean"], s["sd"]
    if compare == "ratio":
        ratios = [x / y for x, y in zip(a, b) if y != 0]
        s = summary(ratios)
        return s["mean"], s["sd"]
    sa, sb = summary(a), summary(b)
    if sa["mean"] is None or sb["mean"] is None:
        return None, 0.0
    return sa["mean"] - sb["mean"], math.sqrt((sa["sd"] ** 2 + sb["sd"] ** 2) / 2)


def overall(checks: list[dict]) -> str:
    counted = [c["verdict"] for c in checks if c.get("counts", True)]
    if counted and all(v == HOLDS for v in counted):
        return HOLDS
    if any(v == FAILS for v in counted):
        return FAILS
    return INCONCLUSIVE


def is_rate(metric: str) -> bool:
    return metric.endswith(("error", "acc", "gap")) or "error_" in metric


def fmt(value: float | None, metric: str = "", points: bool = False) -> str:
    """A number as the page shows it: errors and accuracies in % (a difference of them in percentage
    points), counts with separators."""
    if value is None or not math.isfinite(value):
        return "—"
    if is_rate(metric):
        return f"{100 * value:.1f} {'pt' if points else '%'}"
    if metric in ("params", "macs"):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def fmt_pm(stat: dict, metric: str) -> str:
    if stat.get("mean") is None:
        return "—"
    if stat.get("n", 0) > 1 and stat.get("sd"):
        if is_rate(metric):
            return f"{100 * stat['mean']:.1f} ± {100 * stat['sd']:.1f} %"
        return f"{fmt(stat['mean'], metric)} ± {fmt(stat['sd'], metric)}"
    return fmt(stat["mean"], metric)


# --------------------------------------------------------------------------- the plot


def plot(result: dict, panels: list[dict], path: Path) -> None:
    """One PNG, one panel per entry of the experiment's `plot`: curves (a per-epoch series, mean with a
    ±sd band), bars (a metric per variation, ±sd), lines (a metric against a variation tag, one line
    per value of another tag), scatter (a metric against a metric) and ensemble (the error of k-member
    ensembles against k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    variations = result["variations"]
    for ax, panel in zip(axes[0], panels):
        names = panel.get("variations") or list(variations)
        kind, y = panel["kind"], panel["y"]
        if kind == "curves":
            for name in names:
                s = variations[name]["series"].get(y)
                if not s or not s["mean"]:
                    continue
                xs = list(range(1, len(s["mean"]) + 1))
                lo = [m - d for m, d in zip(s["mean"], s["sd"])]
                hi = [m + d for m, d in zip(s["mean"], s["sd"])]
                line, = ax.plot(xs, s["mean"], label=variations[name]["label"])
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
            ax.set_xlabel(panel.get("x_label") or "epoch")
        elif kind == "ensemble":
            for i, name in enumerate(names):
                stats = variations[name]["metrics"]
                ks = sorted(int(m.rsplit("_", 1)[1]) for m in stats if m.startswith("ensemble_error_"))
                ax.errorbar(ks, [stats[f"ensemble_error_{k}"]["mean"] for k in ks],
                            yerr=[stats[f"ensemble_error_{k}"]["sd"] for k in ks], marker="o", capsize=3,
                            label=variations[name]["label"])
                ax.set_xticks(ks)
            ax.set_xlabel(panel.get("x_label") or "members")
        elif kind == "bars":
            stats = [variations[n]["metrics"].get(y, {}) for n in names]
            means = [s.get("mean") or 0.0 for s in stats]
            ax.bar(range(len(names)), means, yerr=[s.get("sd") or 0.0 for s in stats], capsize=3,
                   color=[f"C{i}" for i in range(len(names))])
            ax.set_xticks(range(len(names)), [variations[n]["label"] for n in names], rotation=30, ha="right",
                          fontsize=8)
        elif kind in ("lines", "scatter"):
            groups: dict[Any, list[str]] = {}
            for n in names:
                groups.setdefault(variations[n]["tags"].get(panel.get("group")) if panel.get("group") else "",
                                  []).append(n)
            for value, members in groups.items():
                if kind == "lines":
                    xs = [variations[n]["tags"][panel["x"]] for n in members]
                    xerr = None
                else:
                    xstats = [variations[n]["metrics"].get(panel["x"], {}) for n in members]
                    xs = [s.get("mean") for s in xstats]
                    xerr = [s.get("sd") or 0.0 for s in xstats]
                ystats = [variations[n]["metrics"].get(y, {}) for n in members]
                points = sorted((x, s.get("mean"), s.get("sd") or 0.0, xe)
                                for x, s, xe in zip(xs, ystats, xerr or [0.0] * len(xs))
                                if x is not None and s.get("mean") is not None)
                if not points:
                    continue
                label = None
                if panel.get("group"):  # a named series ("L2, noise 40 %") as is, a number with its tag's name
                    label = value if isinstance(value, str) else f"{panel['group']} = {value:g}"
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            xerr=[p[3] for p in points] if kind == "scatter" else None,
                            marker="o", capsize=3, linestyle="-" if kind == "lines" else "none", label=label)
                if kind == "scatter":
                    for x, yv, n in zip(xs, ystats, members):
                        if x is not None and yv.get("mean") is not None:
                            ax.annotate(variations[n]["label"], (x, yv["mean"]), fontsize=7,
                                        textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel(panel.get("x_label") or panel["x"])
        if panel.get("log_x"):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        if panel.get("log_y"):
            ax.set_yscale("log")
        ax.set_ylabel(panel.get("y_label") or y)
        ax.set_title(panel.get("title") or "", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{result['title']} ({result['size']}: {result['dataset']['name']}, {len(result['seeds'])} seeds)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- verdict.md and the page


def held(result: dict) -> tuple[int, int]:
    """How many of the checks that decide the verdict hold, and of how many."""
    counted = [c for c in result["checks"] if c.get("counts", True)]
    return sum(c["verdict"] == HOLDS for c in counted), len(counted)


def compared(check: dict) -> str:
    """What a check compares: two variations' difference or ratio, or one variation's value."""
    return check["compare"] if check.get("b_label") else "value"


def check_rows(result: dict) -> list[str]:
    """The verdict table: one row per check."""
    rows = ["| check | whose claim | measured | effect ± spread | rule | verdict |",
            "| --- | --- | --- | --- | --- | --- |"]
    for c in result["checks"]:
        metric = c["metric"]
        measured = f"{c['a_label']}: {fmt_pm(c['a_stat'], metric)}"
        if c.get("b_label"):
            measured += f"; {c['b_label']}: {fmt_pm(c['b_stat'], metric)}"
        unit, points = _unit(c), _points(c)
        effect = (f"{fmt(c['effect'], unit, points)} ± {fmt(c['spread'], unit, points)}"
                  if c["effect"] is not None else "—")
        sign = ">" if c["expect"] == "greater" else "<"
        rule = f"{compared(c)} {sign} {fmt(c['than'], unit, points)} beyond {c['k']:g} sd"
        counted = "" if c.get("counts", True) else " (not counted)"
        rows.append(f"| {c['says']} | {c['whose']} | {measured} | {effect} | {rule} | **{c['verdict']}**{counted} |")
    return rows


def variation_rows(result: dict, metrics: list[str]) -> list[str]:
    """A table of the key numbers per variation (mean ± sd over seeds)."""
    shown = [m for m in metrics if any(m in v["metrics"] for v in result["variations"].values())]
    rows = ["| variation | " + " | ".join(shown) + " |", "| --- |" + " --- |" * len(shown)]
    for v in result["variations"].values():
        rows.append(f"| {v['label']} | " + " | ".join(fmt_pm(v["metrics"].get(m, {}), m) for m in shown) + " |")
    return rows


def provenance(result: dict) -> str:
    d = result["dataset"]
    counts = ", ".join(f"{k} {v}" for k, v in d.get("counts", {}).items())
    seeds = result["seeds"]
    seeds = f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 3 else f"seeds {', '.join(map(str, seeds))}"
    text = (f"Size `{result['size']}`: {d['name']} ({counts}; {d['image_size']}×{d['image_size']}×{d['channels']}), "
            f"{seeds}; {result['runs']} runs ({result['reused_runs']} reused from an earlier identical run), "
            f"{result['cpu_seconds']:.0f} CPU s, {result['wall_seconds']:.0f} s wall.")
    if result.get("overrides"):  # the experiment's file is not the whole recipe of these numbers
        text += " Overrides: " + ", ".join(f"`{o}`" for o in result["overrides"]) + "."
    diverged = {v["label"]: v.get("diverged") for v in result["variations"].values() if v.get("diverged")}
    if diverged:
        text += " Diverged (no numbers from them): " + "; ".join(
            f"{label}, seed {', '.join(map(str, seeds_))}" for label, seeds_ in diverged.items()) + "."
    return text


def corrections(result: dict) -> list[str]:
    """"Where the notes part from the paper": the notes, the paper's evidence against them (cited in the
    experiment's file), what the runs here show and which side that takes, from their checks' verdicts
    (never written by hand)."""
    lines = []
    for c in result.get("corrections") or []:
        checks = [result["checks"][i] for i in c["checks"]]  # each measures what the notes say
        here = "; ".join(
            f"{check['says']}: **{check['verdict']}** ({fmt(check['effect'], _unit(check), _points(check))} "
            f"± {fmt(check['spread'], _unit(check), _points(check))})" for check in checks)
        verdicts = {check["verdict"] for check in checks}
        side = ("" if not checks else
                " So the runs here side with the notes: at this size the paper's evidence is not reproduced."
                if verdicts == {HOLDS} else
                " So the runs here side with the paper." if verdicts == {FAILS} else
                " So the runs here decide neither way.")
        lines += [f"*Where the notes part from the paper.* The notes: {c['notes']} The paper: {c['paper']}"
                  + (f" Measured here: {here}.{side}" if here else ""), ""]
    return lines


def _unit(check: dict) -> str:
    return "ratio" if check["compare"] == "ratio" else check["metric"]


def _points(check: dict) -> bool:
    return check["compare"] == "difference" and bool(check.get("b_label") or check["a"].get("minus"))


def verdict_markdown(result: dict, heading: str = "#", image: str | None = None) -> str:
    """verdict.md (and, with `heading="##"`, the experiment's section of the lab's page)."""
    paper = result["paper"]
    lines = [f"{heading} {result['title']}", "", f"**Claim.** {result['claim']}", ""]
    for note in result["notes"]:
        lines.append(f"- The notes (`seeds/{note['file']}`, {note['section']}): {note['says']}")
    lines += [f"- The paper: {paper['citation']}, {paper['where']}: {paper['number']}", ""]
    if image:
        lines += [f"![{result['title']}]({image})", ""]
    lines += [f"**Verdict at this size: {result['verdict']}.**", ""]
    lines += check_rows(result)
    lines += ["", *variation_rows(result, result.get("table_metrics") or []), ""]
    lines += [provenance(result), ""]
    lines += corrections(result)
    if result.get("caveat"):
        lines += [f"*At this size:* {result['caveat']}", ""]
    return "\n".join(lines)


def page(results: list[dict], missing: list[str], images: dict[str, str]) -> str:
    """docs/experiments.md: the verdicts at a glance, then one section per claim."""
    lines = [
        "# The lab: the lecture notes' claims, measured",
        "",
        "<!-- Generated by `zooflow experiment report` from outputs/experiments/*/result.json: do not edit. -->",
        "",
        "Every claim below is an experiment in `experiments/<name>.yaml`: the claim, where the notes make it, "
        "the paper's own number, the variations trained through zooflow's engine, and the rule that decides. "
        "`zooflow experiment run NAME` reproduces one (`--size gpu` for the paper-like setting). "
        "The rule: a check **holds** when its effect minus twice its spread (the seeds' pooled standard deviation) "
        "is beyond the threshold in the claimed direction, **does not hold** when the effect plus twice its spread "
        "is not, and is **inconclusive at this size** otherwise. Small data and short schedules are not the papers' "
        "setting: a claim that does not show here is reported as such, with the reason it might not.",
        "",
        "| claim | verdict | checks that hold | size | CPU s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        anchor = r["name"].replace("_", "-")
        holding, counted = held(r)
        lines.append(f"| [{r['title']}](#{anchor}) | **{r['verdict']}** | {holding} of {counted} | "
                     f"{r['size']} ({r['dataset']['name']}) | {r['cpu_seconds']:.0f} |")
    for name in missing:
        lines.append(f"| {name} | not run yet | — | — | — |")
    for r in results:
        lines += ["", f'<a id="{r["name"].replace("_", "-")}"></a>', "",
                  verdict_markdown(r, heading="##", image=images.get(r["name"]))]
    return "\n".join(lines).rstrip() + "\n"
