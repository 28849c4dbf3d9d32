"""Evaluate one trained architecture on val and test.

Accuracy (top-1, top-5), per-class precision/recall/F1, confusion matrix (counts and normalised),
negative log-likelihood, expected calibration error with a reliability diagram, optional
test-time augmentation (flip; VGG-style multi-crop), latency and throughput on the device,
parameters and FLOPs. Writes `outputs/eval/<arch>/`:

    metrics.json                 scalars only (DVC metrics): val/test accuracy, top5, nll, ece, size
    speed.json                   latency and throughput (kept apart: they vary from run to run)
    report.json                  per-class precision/recall/F1/support, confusion matrices, reliability bins
    logits/{val,test}_logits.npy the logits the ensemble stage combines (no re-inference there)
    logits/{val,test}_labels.npy their labels
    plots/confusion_{val,test}[_normalized].png, plots/reliability_{val,test}.png

The metric functions at the top take plain arrays, so the ensemble stage reuses them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models import count_params
from tasks.files import atomic_dir, read_json, save_npy, write_json
from tasks.layout import Layout
from tasks.params import Params
from tasks.engine import pick_device
from tasks.errors import UserError
from tasks.readers import load_prepared, load_trained, preprocessing
from tasks.serving import preprocess

SPLITS = ("val", "test")


def logits_file(folder: Path, split: str, kind: str = "logits") -> Path:
    """Where evaluate keeps a split's saved `logits` or `labels` inside `outputs/eval/<arch>/`."""
    return folder / "logits" / f"{split}_{kind}.npy"


# --------------------------------------------------------------------------- metrics on arrays


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of rows whose label is among the k highest scores (k is capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true labels."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)).mean())


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error (Guo et al. 2017) over `bins` equal-width confidence bins.

    ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|. Returns it and the per-bin table.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else 0.0
        conf = float(confidence[mask].mean()) if count else 0.0
        ece += count / max(len(labels), 1) * abs(acc - conf)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                      "accuracy": acc, "confidence": conf})
    return float(ece), table


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: list[str], bins: int = 15) -> dict:
    """Every metric of one split from its class probabilities."""
    from sklearn.metrics import precision_recall_fscore_support

    num_classes = len(classes)
    predictions = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(num_classes)), zero_division=0
    )
    counts = confusion(labels, predictions, num_classes)
    rows = counts.sum(axis=1, keepdims=True)
    ece, table = calibration(probs, labels, bins)
    return {
        "n": int(len(labels)),
        "accuracy": top_k_accuracy(probs, labels, 1),
        "top5": top_k_accuracy(probs, labels, 5),
        "nll": nll(probs, labels),
        "ece": ece,
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            str(name): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion": counts.tolist(),
        "confusion_normalized": np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0).tolist(),
        "reliability": table,
    }


def scalars(report: dict) -> dict[str, float]:
    return {k: report[k] for k in ("accuracy", "top5", "nll", "ece", "macro_f1")}


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str, normalized: bool) -> Path:
    plt = _pyplot()
    n = len(classes)
    size = min(max(4.0, 0.45 * n + 2), 24.0)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90)
        ax.set_yticks(range(n), [str(c) for c in classes])
        threshold = (np.max(matrix) if np.size(matrix) else 0) / 2
        for i in range(n):
            for j in range(n):
                text = f"{matrix[i][j]:.2f}" if normalized else str(int(matrix[i][j]))
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if matrix[i][j] > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(table: list[dict], ece: float, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centers = [(b["lower"] + b["upper"]) / 2 for b in table]
    width = table[0]["upper"] - table[0]["lower"]
    ax.bar(centers, [b["accuracy"] for b in table], width=width, edgecolor="black", label="accuracy")
    ax.bar(centers, [b["confidence"] - b["accuracy"] if b["count"] else 0 for b in table],
           bottom=[b["accuracy"] for b in table], width=width, color="red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}  (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- inference


def tta_views(x: Tensor, mode: str, padding: int) -> list[Tensor]:
    """Test-time views of a normalised batch: itself; + its mirror; or VGG-style multi-crop.

    Multi-crop (Simonyan & Zisserman 2014, after Krizhevsky et al. 2012): the four corner crops and
    the centre crop of the image padded by `padding` pixels, and their mirrors: ten views.
    """
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(-1)]
    p = max(padding, 1)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect" if p < min(h, w) else "replicate")
    offsets = [(0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p), (p, p)]
    crops = [padded[..., i : i + h, j : j + w] for i, j in offsets]
    return crops + [c.flip(-1) for c in crops]


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, prep: dict, batch_size: int,
                   device: torch.device, tta: str = "none", padding: int = 4) -> np.ndarray:
    """Logits for raw uint8 NHWC images. With TTA: the log of the views' mean probabilities."""
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start : start + batch_size], **prep).to(device)
        views = tta_views(x, tta, padding)
        if len(views) == 1:
            out.append(model(x).float().cpu())
        else:
            probs = torch.stack([torch.softmax(model(v).float(), 1) for v in views]).mean(0)
            out.append(probs.clamp_min(1e-12).log().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@torch.inference_mode()
def count_flops(model: nn.Module, example: Tensor) -> int | None:
    """FLOPs of one forward pass of one image (torch.utils.flop_counter; 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(example[:1])
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - an op the counter cannot trace: report unknown, not fail
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_speed(model: nn.Module, example: Tensor, device: torch.device, repeats: int,
                  batch: int) -> dict[str, float]:
    """Median latency (ms/image) at batch 1 and throughput (images/s) at `batch`, on `device`."""
    one = example[:1].to(device)
    for _ in range(3):
        model(one)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        model(one)
        _sync(device)
        times.append(time.perf_counter() - t0)
    big = example[:1].expand(batch, *example.shape[1:]).contiguous().to(device)
    model(big)
    _sync(device)
    runs = max(1, repeats // 10)
    t0 = time.perf_counter()
    for _ in range(runs):
        model(big)
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"latency_ms": float(np.median(times) * 1000), "throughput": float(batch * runs / elapsed),
            "throughput_batch": batch}


# --------------------------------------------------------------------------- the stage


def evaluate_model(model: nn.Module, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str],
                   prep: dict, params: Params, out: Path) -> dict[str, Any]:
    """Evaluate `model` on `splits` ({"val": (uint8 NHWC, labels), ...}); write everything into `out`."""
    ep = params.evaluate
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(params.device)
    model = model.to(device).eval()
    metrics: dict[str, Any] = {}
    report: dict[str, Any] = {"classes": list(classes)}
    padding = params.augment.crop_padding
    for split, (images, labels) in splits.items():
        labels = np.asarray(labels, dtype=np.int64)
        logits = predict_logits(model, images, prep, ep.batch_size, device)
        if not np.isfinite(logits).all():
            bad = int((~np.isfinite(logits)).any(axis=1).sum())
            raise UserError(f"the model's outputs are not finite on {bad} of {len(logits)} {split} images: it "
                            f"diverged; lower train.optimizer.lr or set train.grad_clip")
        probs = softmax(logits.astype(np.float64))
        rep = classification_report(probs, labels, classes, ep.ece_bins)
        report[split] = rep
        metrics[split] = scalars(rep)
        if ep.tta != "none":
            tta_logits = predict_logits(model, images, prep, ep.batch_size, device, ep.tta, padding)
            metrics[f"{split}_tta"] = scalars(classification_report(softmax(tta_logits.astype(np.float64)),
                                                                     labels, classes, ep.ece_bins))
        save_npy(logits_file(out, split), logits.astype(np.float32))
        save_npy(logits_file(out, split, "labels"), labels)
        plots = out / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        plot_confusion(np.array(rep["confusion"]), classes, plots / f"confusion_{split}.png",
                       f"{split}: counts", normalized=False)
        plot_confusion(np.array(rep["confusion_normalized"]), classes, plots / f"confusion_{split}_normalized.png",
                       f"{split}: row-normalised", normalized=True)
        plot_reliability(rep["reliability"], rep["ece"], plots / f"reliability_{split}.png", f"{split} reliability")
    first = next(iter(splits.values()))[0]
    example = preprocess(first[:1], **prep).to(device)
    metrics["params"] = count_params(model)
    metrics["flops"] = count_flops(model, example)
    speed = {}
    if ep.measure_speed:
        speed = {**measure_speed(model, example, device, ep.latency_repeats, ep.throughput_batch),
                 "device": str(device)}
        write_json(out / "speed.json", speed)
    write_json(out / "metrics.json", metrics)
    write_json(out / "report.json", report)
    return {**metrics, "speed": speed} if speed else metrics


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json as MLflow metric names: val_accuracy, test_ece, latency_ms, ..."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    flat[f"{key}_{sub}" if key != "speed" else sub] = v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


def evaluate(params: Params, layout: Layout, arch: str) -> dict:
    """Evaluate the trained `arch` on val and test; write `layout.eval(arch)`; return the headline numbers."""
    data = load_prepared(layout.prepared)
    prep = preprocessing(layout, data)
    model = load_trained(layout, arch)
    splits = {split: data.split(split) for split in SPLITS}
    with atomic_dir(layout.eval(arch)) as out:
        metrics = evaluate_model(model, splits, data.classes, prep, params, out)
    return {"arch": arch, "val_accuracy": metrics["val"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"],
            "params": metrics["params"], "flops": metrics["flops"]}


def evaluate_tracked(params: Params, layout: Layout, arch: str, run_id: str | None = None) -> dict:
    """evaluate(), then its metrics and plots logged to MLflow run `run_id`, by default the run its
    training opened."""
    from tasks import tracking

    run_id = run_id or tracking.arch_run_id(layout, arch)
    if not run_id:
        return evaluate(params, layout, arch)
    with tracking.ending(params, run_id):
        summary = evaluate(params, layout, arch)
        folder = layout.eval(arch)
        metrics = read_json(folder / "metrics.json")
        if (folder / "speed.json").exists():
            metrics["speed"] = read_json(folder / "speed.json")
        log_to_mlflow(params, run_id, folder, metrics)
    return summary


def log_to_mlflow(params: Params, run_id: str, folder: Path, metrics: dict) -> None:
    from tasks import tracking

    tracking.log_metrics(params, run_id, flat_metrics(metrics))
    for path in sorted([*folder.glob("*.json"), *folder.glob("plots/*.png")]):
        tracking.log_artifact(params, run_id, path, "eval")
