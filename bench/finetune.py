"""Fine-tuned vs from scratch, digits -> MNIST: how many epochs, and how much accuracy, does starting
from weights trained on other digits buy when few labelled images are at hand?

Setup: the source is each architecture trained on the embedded digits (scikit-learn's 1,797 8x8 digits,
ingested at 32x32 like `zooflow run`: 1,293 train images), `train.init` scratch. The target is MNIST's
official test split from ../shared/datasets/mnist-t10k (10,000 28x28 digits, ingested at 32x32 by the
idx source, carved 7,199 / 801 / 2,000 train / val / test with split_seed 0); each run trains on the
first N images per class of that train split, selects its epoch on the whole val split and is reported
on the 2,000 test images. Same recipe for every start: params.yaml's model options for the architecture,
SGD momentum 0.9, lr 0.05, wd 5e-4, cosine, batch 32, `--epochs` epochs, crop padding 4, no flip. Starts:
    scratch    the architecture's own initialisation
    finetune   train.init = the digits model's model.pt (the same ten classes: the head is kept)
    probe      the same, and train.finetune {freeze_epochs: 2, backbone_lr_mult: 0.1}
"epochs to X" is the first epoch whose val accuracy reaches X (the fine-tune's start is its first epoch).

Measured: see README "Benchmarks" (CPU, one thread, a 2-core machine shared with other busy processes).

Usage: python bench/finetune.py [--archs lenet5 resnet20] [--per-class 10 50] [--seeds 0 1 2] [--epochs 15]
Writes bench/results/finetune/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere
MNIST = ROOT.parent / "shared" / "datasets" / "mnist-t10k"
OUT = ROOT / "bench" / "results" / "finetune"
STARTS = {"scratch": {}, "finetune": {"init": True}, "probe": {"init": True, "freeze_epochs": 2, "backbone_lr_mult": 0.1}}
TARGETS = (0.85, 0.9)


def params_for(arch: str, overrides: list[str]):
    """params.yaml's options for `arch` with this bench's recipe."""
    from tasks.params import load_params

    return load_params(ROOT / "params.yaml", [
        f"train.architectures=[{arch}]", "device=cpu", "train.progress=off", "train.num_threads=1",
        "train.batch_size=32", "train.optimizer.lr=0.05", "train.optimizer.name=sgd", "train.schedule.name=cosine",
        "augment.hflip=false", "augment.crop_padding=4", "data.workers=1", f"train.overrides.{arch}={{}}",
        *overrides])


def ingest_once(folder: Path, overrides: list[str]):
    from tasks.augment import augment
    from tasks.ingest import ingest
    from tasks.layout import Layout

    layout = Layout(folder)
    if not (layout.prepared / "meta.json").exists():
        params = params_for("lenet5", overrides)
        ingest(params, layout)
        augment(params, layout)
    return layout


def subset(mnist, folder: Path, per_class: int):
    """The first `per_class` train images of every class; val and test whole."""
    from tasks.augment import augment
    from tasks.layout import Layout
    from tasks.readers import load_prepared, write_prepared

    layout = Layout(folder)
    if not (layout.prepared / "meta.json").exists():
        data = load_prepared(mnist.prepared)
        x, y = (np.asarray(a) for a in data.split("train"))
        keep = np.concatenate([np.flatnonzero(y == k)[:per_class] for k in range(data.num_classes)])
        keep.sort()
        splits = {"train": (x[keep], y[keep]), **{s: tuple(np.asarray(a) for a in data.split(s)) for s in ("val", "test")}}
        write_prepared(layout.prepared, splits, data.classes, {"kind": "mnist-subset", "per_class": per_class})
        augment(params_for("lenet5", []), layout)
    return layout


def test_accuracy(params, layout, arch: str) -> float:
    import torch

    from tasks import engine
    from tasks.readers import load_prepared, load_stats, load_trained

    test = load_prepared(layout.prepared).split("test")
    model = load_trained(layout, arch)
    result = engine.evaluate(model, engine.DeviceData(*test, torch.device("cpu"), "ram"), stats=load_stats(layout),
                             batch_size=512, tp=params.train.for_arch(arch), device=torch.device("cpu"))
    return result["acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["lenet5", "resnet20"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[10, 50])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    if not MNIST.exists():
        sys.exit(f"{MNIST} is not here: this bench needs MNIST's test split (../shared/datasets/mnist-t10k)")

    import torch

    from tasks.files import write_json
    from tasks.train import train

    torch.set_num_threads(1)
    digits = ingest_once(OUT / "digits", [])
    mnist = ingest_once(OUT / "mnist", ["data.source=idx", f"data.path={MNIST}"])
    rows = []
    for arch in args.archs:
        source = digits.train(arch) / "model.pt"
        if not source.exists():
            train(params_for(arch, [f"train.epochs={args.epochs}"]), digits, arch)
        source_acc = test_accuracy(params_for(arch, []), digits, arch)
        for per_class in args.per_class:
            target = subset(mnist, OUT / f"mnist-{per_class}", per_class)
            for start, how in STARTS.items():
                runs = []
                for seed in args.seeds:
                    overrides = [f"seed={seed}", f"train.epochs={args.epochs}", "train.resume=false"]
                    if how.get("init"):
                        overrides.append(f"train.init={source}")
                    if how.get("freeze_epochs"):
                        overrides += [f"train.finetune.freeze_epochs={how['freeze_epochs']}",
                                      f"train.finetune.backbone_lr_mult={how['backbone_lr_mult']}"]
                    params = params_for(arch, overrides)
                    cpu = time.process_time()
                    summary = train(params, target, arch)
                    history = json.loads((target.train(arch) / "history.json").read_text())
                    val = [h["val_acc"] for h in history]
                    runs.append({"seed": seed, "val_acc": val, "best_val_acc": summary["best_val_acc"],
                                 "best_epoch": summary["best_epoch"] + 1, "test_acc": test_accuracy(params, target, arch),
                                 "first_train_loss": history[0]["train_loss"], "cpu_seconds": time.process_time() - cpu,
                                 **{f"epochs_to_{t}": next((i + 1 for i, v in enumerate(val) if v >= t), None)
                                    for t in TARGETS}})
                rows.append({"arch": arch, "per_class": per_class, "train_images": 10 * per_class, "start": start,
                             "source_test_acc_on_digits": source_acc, "runs": runs})
                print(line(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "finetune.json", {"epochs": args.epochs, "seeds": args.seeds, "torch": torch.__version__,
                                       "rows": rows})
    print("\n" + table(rows))
    print(f"\nwrote {OUT / 'finetune.json'}")


def _mean(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def _epochs(values: list) -> str:
    """Median epochs to a target; '>E' when a run never reached it."""
    got = sorted(v if v is not None else float("inf") for v in values)
    mid = got[len(got) // 2]
    return f"{mid:.0f}" if mid != float("inf") else "never"


def line(row: dict) -> str:
    runs = row["runs"]
    return (f"| {row['arch']} | {row['train_images']} | {row['start']} | {_mean([r['first_train_loss'] for r in runs])} | "
            f"{_mean([r['val_acc'][0] for r in runs])} | "
            + " | ".join(_epochs([r[f'epochs_to_{t}'] for r in runs]) for t in TARGETS)
            + f" | {_mean([r['best_val_acc'] for r in runs])} | {_mean([r['test_acc'] for r in runs])} | "
              f"{statistics.mean(r['cpu_seconds'] for r in runs):.1f} |")


def table(rows: list[dict]) -> str:
    head = ("| arch | train images | start | train loss, epoch 1 | val acc, epoch 1 | "
            + " | ".join(f"epochs to {t:.0%} val" for t in TARGETS)
            + " | best val acc | test acc | CPU s / run |")
    return "\n".join([head, "|" + " --- |" * (head.count("|") - 1), *(line(r) for r in rows)])


if __name__ == "__main__":
    main()
