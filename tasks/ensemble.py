"""Ensemble the evaluated architectures from their saved logits, without re-running any model.

Four ways to combine members, every one chosen or fitted on val only and then reported on test:

- soft voting: the mean of the members' probabilities;
- hard voting: the majority of their top-1 labels;
- weighted: soft voting with weights on the simplex fitted to minimise val NLL;
- greedy: forward selection with replacement (Caruana et al. 2004, "Ensemble Selection from
  Libraries of Models"): start from the best member, keep adding whichever member (again, if it
  helps) most improves val accuracy, and keep the best prefix — so it is never worse on val than
  the best single member.

The gain over the best single member is reported for each (AlexNet's seven CNNs took ImageNet
top-5 error from 18.2 % to 15.4 %). The chosen ensemble goes to `outputs/ensemble/members.json`
with its members and weights; `tasks.register` turns it into one pyfunc model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks import caching
from tasks.errors import UserError
from tasks.evaluate import classification_report, logits_file, nll, scalars, softmax
from tasks.files import atomic_dir, read_json, save_npy, write_json
from tasks.layout import Layout
from tasks.params import Params
from tasks.serving import hard_vote, soft_vote, vote

__all__ = ["ensemble", "ensemble_logits", "fit_weights", "greedy_selection", "hard_vote", "soft_vote", "vote"]

METHODS = ("soft", "hard", "weighted", "greedy")


# --------------------------------------------------------------------------- combining probabilities


def fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the NLL of the weighted soft vote on (val) `labels`."""
    from scipy.optimize import minimize

    m = len(probs)
    if m == 1:
        return np.ones(1)
    picked = probs[:, np.arange(len(labels)), labels]  # members x N: probability of the truth

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        mix = np.clip(w @ picked, 1e-12, None)
        value = -np.log(mix).mean()
        grad_w = -(picked / mix).mean(axis=1)  # d loss / d w
        grad_theta = w * (grad_w - w @ grad_w)  # through the softmax
        return float(value), grad_theta

    result = minimize(loss, np.zeros(m), jac=True, method="L-BFGS-B")
    w = np.exp(result.x - result.x.max())
    return w / w.sum()


def greedy_selection(probs: np.ndarray, labels: np.ndarray, rounds: int) -> tuple[np.ndarray, list[dict]]:
    """Caruana et al. (2004) forward selection with replacement on val; returns counts per member.

    Each round adds the member whose inclusion gives the best (val accuracy, -val NLL); the
    answer is the best ensemble seen over all rounds, so it is at least as good on val as the best
    single member (round 1 picks exactly that one).
    """
    m = len(probs)
    counts = np.zeros(m, dtype=np.int64)
    total = np.zeros_like(probs[0])
    best_key, best_counts, trace = None, counts.copy(), []
    for step in range(1, rounds + 1):
        candidates = []
        for i in range(m):
            mix = (total + probs[i]) / step
            candidates.append(((mix.argmax(1) == labels).mean(), -nll(mix, labels), -i))
        key = max(candidates)
        i = -key[2]
        counts[i] += 1
        total += probs[i]
        trace.append({"round": step, "added": i, "val_accuracy": float(key[0]), "val_nll": float(-key[1])})
        if best_key is None or key[:2] > best_key:
            best_key, best_counts = key[:2], counts.copy()
    return best_counts, trace


# --------------------------------------------------------------------------- the stage


def combine(method: str, val: np.ndarray, labels: np.ndarray, rounds: int) -> tuple[np.ndarray, str, dict]:
    """Weights fitted on val for `method`, the vote kind they are used with, and extra details."""
    m = len(val)
    if method == "soft":
        return np.ones(m) / m, "soft", {}
    if method == "hard":
        return np.ones(m) / m, "hard", {}
    if method == "weighted":
        return fit_weights(val, labels), "soft", {}
    if method == "greedy":
        counts, trace = greedy_selection(val, labels, rounds)
        return counts / counts.sum(), "soft", {"counts": counts.tolist(), "trace": trace}
    raise ValueError(f"unknown ensemble method {method!r}")


def ensemble_logits(members: list[str], val_logits: list[np.ndarray], test_logits: list[np.ndarray],
                    val_labels: np.ndarray, test_labels: np.ndarray, classes: list[str], params: Params) -> dict:
    """Every method on these members' saved logits; `chosen` is the params' method (auto: best on val)."""
    val = np.stack([softmax(np.asarray(v, dtype=np.float64)) for v in val_logits])
    test = np.stack([softmax(np.asarray(t, dtype=np.float64)) for t in test_logits])
    singles = {
        arch: {"val": scalars(classification_report(v, val_labels, classes)),
               "test": scalars(classification_report(t, test_labels, classes))}
        for arch, v, t in zip(members, val, test)
    }
    best_single = max(members, key=lambda a: (singles[a]["val"]["accuracy"], -singles[a]["val"]["nll"]))
    results: dict[str, Any] = {}
    for method in METHODS:
        weights, kind, extra = combine(method, val, val_labels, params.ensemble.greedy_rounds)
        val_probs, test_probs = vote(kind, val, weights), vote(kind, test, weights)
        v = scalars(classification_report(val_probs, val_labels, classes))
        t = scalars(classification_report(test_probs, test_labels, classes))
        results[method] = {
            "vote": kind,
            "weights": {a: float(w) for a, w in zip(members, weights)},
            "val": v,
            "test": t,
            "gain_val_accuracy": v["accuracy"] - singles[best_single]["val"]["accuracy"],
            "gain_test_accuracy": t["accuracy"] - singles[best_single]["test"]["accuracy"],
            **extra,
            "_probs": (val_probs, test_probs),
        }
    method = params.ensemble.method
    if method == "auto":  # best on val; ties go to the simpler method (METHODS is in that order)
        method = max(METHODS, key=lambda k: (results[k]["val"]["accuracy"], -results[k]["val"]["nll"],
                                             -METHODS.index(k)))
    chosen = results[method]
    active = {a: w for a, w in chosen["weights"].items() if w > 0}
    return {
        "members": members,
        "classes": classes,
        "singles": singles,
        "best_single": best_single,
        "methods": {k: {kk: vv for kk, vv in r.items() if kk != "_probs"} for k, r in results.items()},
        "chosen": {
            "method": method,
            "vote": chosen["vote"],
            "weights": active,
            "val": chosen["val"],
            "test": chosen["test"],
            "gain_val_accuracy": chosen["gain_val_accuracy"],
            "gain_test_accuracy": chosen["gain_test_accuracy"],
        },
        "_probs": chosen["_probs"],
    }


def evaluated_members(params: Params, layout: Layout) -> dict[str, str]:
    """{arch: evaluate key} of the members: evaluated by this run's inputs (a failed or stale one is left out)."""
    names = params.ensemble.members or params.train.architectures
    found = caching.current_evaluations(params, layout, names)
    missing = [a for a in (params.ensemble.members or []) if a not in found]
    if missing:
        raise UserError(f"ensemble.members: {', '.join(missing)} has no evaluation of this run's inputs under "
                        f"{layout.eval(missing[0])}; run `zooflow evaluate --arch {missing[0]}` first")
    return found


def ensemble(params: Params, layout: Layout) -> dict:
    """Combine the evaluated architectures' saved logits; write `layout.ensemble`; return a summary."""
    member_keys = evaluated_members(params, layout)
    members = list(member_keys)
    if not members:
        raise UserError(f"ensemble: no evaluated architecture under {layout.eval('*').parent}; run evaluate first")
    def load(arch: str, split: str, kind: str = "logits") -> np.ndarray:
        return np.load(logits_file(layout.eval(arch), split, kind))

    val_labels, test_labels = load(members[0], "val", "labels"), load(members[0], "test", "labels")
    for arch in members[1:]:
        if not (np.array_equal(load(arch, "val", "labels"), val_labels)
                and np.array_equal(load(arch, "test", "labels"), test_labels)):
            raise UserError(f"ensemble: {arch} was evaluated on other data than {members[0]}; re-run evaluate")
    val_logits = [load(a, "val") for a in members]
    test_logits = [load(a, "test") for a in members]
    classes = _classes(layout, members[0], val_logits[0].shape[1])
    result = ensemble_logits(members, val_logits, test_logits, val_labels, test_labels, classes, params)
    val_probs, test_probs = result.pop("_probs")
    result["member_keys"] = member_keys
    with atomic_dir(layout.ensemble) as out:
        write_json(out / "members.json", result)
        write_json(out / "metrics.json", {"val": result["chosen"]["val"], "test": result["chosen"]["test"],
                                          "gain_val_accuracy": result["chosen"]["gain_val_accuracy"],
                                          "gain_test_accuracy": result["chosen"]["gain_test_accuracy"]})
        save_npy(out / "val_probs.npy", val_probs.astype(np.float32))
        save_npy(out / "test_probs.npy", test_probs.astype(np.float32))
    chosen = result["chosen"]
    return {"method": chosen["method"], "members": chosen["weights"], "val_accuracy": chosen["val"]["accuracy"],
            "test_accuracy": chosen["test"]["accuracy"], "best_single": result["best_single"],
            "gain_test_accuracy": chosen["gain_test_accuracy"]}


def _classes(layout: Layout, arch: str, num_classes: int) -> list[str]:
    report = layout.eval(arch) / "report.json"
    if report.exists():
        classes = read_json(report).get("classes")
        if classes and len(classes) == num_classes:
            return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]
