"""Fine-tuned vs from scratch: how many epochs, and how much accuracy, does starting from weights
trained on other images buy when few labelled images are at hand? Two transfers:

--task mnist   digits -> MNIST. The source is each architecture trained on the embedded digits
               (scikit-learn's 1,797 8x8 digits, ingested at 32x32 like `zooflow run`: 1,293 train
               images). The target is MNIST's official test split from ../shared/datasets/mnist-t10k
               (10,000 28x28 digits ingested at 32x32 by the idx source, carved 7,199 / 801 / 2,000
               train / val / test with split_seed 0). Flip off. The same ten classes: the head is kept.
--task cifar   CIFAR-10's first five classes -> its last five. The source is each architecture trained
               on airplane, automobile, bird, cat, deer (22,500 train images of the tarball at
               ../shared/datasets/cifar10-jpg.tar.gz, ingested at 32x32 RGB); the target is dog, frog,
               horse, ship, truck (val: their 2,500 carved val images, test: their 5,000 official test
               images). Other classes: the head is replaced.

Each target run trains on the first N images per class of the target's train split, selects its epoch
on the whole val split and is reported on the whole test split. Same recipe for every start:
params.yaml's model options for the architecture, SGD momentum 0.9, lr 0.05, wd 5e-4, cosine, batch
32, `--epochs` epochs, crop padding 4 (and flips for CIFAR). The source: the same recipe at batch 128,
lr 0.1, `--source-epochs` epochs. Starts:
    scratch    the architecture's own initialisation
    finetune   train.init = the source's model.pt
    probe      the same, and train.finetune {freeze_epochs: 2, backbone_lr_mult: 0.1}
"epochs to X" is the median over seeds of the first epoch whose val accuracy reaches X ("never": within
`--epochs`); "train loss, epoch 1" is the mean loss of the first epoch's steps.

Measured: see README "Benchmarks" (CPU, one thread, a 2-core machine shared with other busy processes;
CPU seconds per run, the wall time was two to three times that).

Usage: python bench/finetune.py [--task mnist|cifar] [--archs lenet5 resnet20] [--per-class 10 100]
                                [--seeds 0 1] [--epochs 15] [--source-epochs 15]
Writes bench/results/finetune/<task>.json.
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
DATASETS = ROOT.parent / "shared" / "datasets"
MNIST, CIFAR = DATASETS / "mnist-t10k", DATASETS / "cifar10-jpg.tar.gz"
OUT = ROOT / "bench" / "results" / "finetune"
STARTS = {"scratch": {}, "finetune": {"init": True}, "probe": {"init": True, "freeze_epochs": 2, "backbone_lr_mult": 0.1}}
TARGETS = {"mnist": (0.85, 0.9), "cifar": (0.6, 0.7)}


def params_for(arch: str, overrides: list[str], flip: bool = False):
    """params.yaml's options for `arch` with this bench's recipe."""
    from tasks.params import load_params

    return load_params(ROOT / "params.yaml", [
        f"train.architectures=[{arch}]", "device=cpu", "train.progress=off", "train.num_threads=1",
        "train.batch_size=32", "train.optimizer.lr=0.05", "train.optimizer.name=sgd", "train.schedule.name=cosine",
        f"augment.hflip={str(flip).lower()}", "augment.crop_padding=4", "data.workers=1",
        f"train.overrides.{arch}={{}}", *overrides])


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


def subset(full, folder: Path, classes: list[int], per_class: int | None):
    """`classes` of the prepared dataset `full`, relabelled 0..; the first `per_class` train images of
    each (None: all of them); val and test whole."""
    from tasks.augment import augment
    from tasks.layout import Layout
    from tasks.readers import load_prepared, write_prepared

    layout = Layout(folder)
    if not (layout.prepared / "meta.json").exists():
        data = load_prepared(full.prepared)
        splits = {}
        for split in ("train", "val", "test"):
            x, y = (np.asarray(a) for a in data.split(split))
            take = per_class if split == "train" else None
            keep = np.sort(np.concatenate([np.flatnonzero(y == k)[:take] for k in classes]))
            splits[split] = (x[keep], np.searchsorted(classes, y[keep]))
        write_prepared(layout.prepared, splits, [data.classes[k] for k in classes],
                       {"kind": "subset", "of": str(full.root), "per_class": per_class})
        augment(params_for("lenet5", []), layout)
    return layout


def task_data(task: str):
    """(the source's prepared data, a function per_class -> the target's), `flip`."""
    if task == "mnist":
        if not MNIST.exists():
            sys.exit(f"{MNIST} is not here: --task mnist needs MNIST's test split")
        digits = ingest_once(OUT / "digits", [])
        mnist = ingest_once(OUT / "mnist", ["data.source=idx", f"data.path={MNIST}"])
        return digits, lambda n: subset(mnist, OUT / f"mnist-{n}", list(range(10)), n), False
    if not CIFAR.exists():
        sys.exit(f"{CIFAR} is not here: --task cifar needs the CIFAR-10 tarball")
    cifar = ingest_once(OUT / "cifar", ["data.source=archive", f"data.path={CIFAR}", "data.channels=3"])
    first = subset(cifar, OUT / "cifar-first5", [0, 1, 2, 3, 4], None)
    return first, lambda n: subset(cifar, OUT / f"cifar-last5-{n}", [5, 6, 7, 8, 9], n), True


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
    parser.add_argument("--task", choices=["mnist", "cifar"], default="mnist")
    parser.add_argument("--archs", nargs="+", default=["lenet5", "resnet20"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--source-epochs", type=int, default=15)
    args = parser.parse_args()

    import torch

    from tasks.files import write_json
    from tasks.train import train

    torch.set_num_threads(1)
    source_data, target_data, flip = task_data(args.task)
    targets = TARGETS[args.task]
    rows = []
    for arch in args.archs:
        source = source_data.train(arch) / "model.pt"
        if not source.exists():
            train(params_for(arch, [f"train.epochs={args.source_epochs}", "train.batch_size=128",
                                    "train.optimizer.lr=0.1"], flip), source_data, arch)
        source_acc = test_accuracy(params_for(arch, []), source_data, arch)
        for per_class in args.per_class:
            target = target_data(per_class)
            for start, how in STARTS.items():
                runs = []
                for seed in args.seeds:
                    overrides = [f"seed={seed}", f"train.epochs={args.epochs}", "train.resume=false"]
                    if how.get("init"):
                        overrides.append(f"train.init={source}")
                    if how.get("freeze_epochs"):
                        overrides += [f"train.finetune.freeze_epochs={how['freeze_epochs']}",
                                      f"train.finetune.backbone_lr_mult={how['backbone_lr_mult']}"]
                    params = params_for(arch, overrides, flip)
                    cpu = time.process_time()
                    summary = train(params, target, arch)
                    history = json.loads((target.train(arch) / "history.json").read_text())
                    val = [h["val_acc"] for h in history]
                    runs.append({"seed": seed, "val_acc": val, "best_val_acc": summary["best_val_acc"],
                                 "best_epoch": summary["best_epoch"] + 1, "test_acc": test_accuracy(params, target, arch),
                                 "first_train_loss": history[0]["train_loss"], "cpu_seconds": time.process_time() - cpu,
                                 **{f"epochs_to_{t}": next((i + 1 for i, v in enumerate(val) if v >= t), None)
                                    for t in targets}})
                rows.append({"arch": arch, "per_class": per_class, "train_images": len(target_labels(target)),
                             "start": start, "source_test_acc": source_acc, "runs": runs})
                print(line(rows[-1], targets), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    result = OUT / f"{args.task}.json"
    write_json(result, {"task": args.task, "epochs": args.epochs, "source_epochs": args.source_epochs,
                        "seeds": args.seeds, "torch": torch.__version__, "rows": rows})
    print("\n" + table(rows, targets))
    print(f"\nwrote {result}")


def target_labels(layout) -> np.ndarray:
    from tasks.readers import load_prepared

    return load_prepared(layout.prepared).split("train")[1]


def _mean(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def _epochs(values: list) -> str:
    """The upper median over seeds of the epochs to a target; 'never' when it was not reached."""
    got = sorted(v if v is not None else float("inf") for v in values)
    mid = got[len(got) // 2]
    return f"{mid:.0f}" if mid != float("inf") else "never"


def line(row: dict, targets: tuple[float, ...]) -> str:
    runs = row["runs"]
    return (f"| {row['arch']} | {row['train_images']} | {row['start']} | {_mean([r['first_train_loss'] for r in runs])} | "
            f"{_mean([r['val_acc'][0] for r in runs])} | "
            + " | ".join(_epochs([r[f'epochs_to_{t}'] for r in runs]) for t in targets)
            + f" | {_mean([r['best_val_acc'] for r in runs])} | {_mean([r['test_acc'] for r in runs])} | "
              f"{statistics.mean(r['cpu_seconds'] for r in runs):.1f} |")


def table(rows: list[dict], targets: tuple[float, ...]) -> str:
    head = ("| arch | train images | start | train loss, epoch 1 | val acc, epoch 1 | "
            + " | ".join(f"epochs to {t:.0%} val" for t in targets)
            + " | best val acc | test acc | CPU s / run |")
    return "\n".join([head, "|" + " --- |" * (head.count("|") - 1), *(line(r, targets) for r in rows)])


if __name__ == "__main__":
    main()
