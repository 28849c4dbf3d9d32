"""The train stage: one architecture, trained on `train`, its best epoch chosen on `val`.

Writes `outputs/train/<arch>/`:
    model.pt        the best-val weights (a plain state_dict: torch.load(..., weights_only=True))
    checkpoint.pt   the last epoch: model, optimizer, schedule, EMA, RNG, epoch, best-so-far, history
    history.json    per epoch: train loss/acc, val loss/acc, lr, img/s, seconds
    train.json      the summary: arch, params, train_seconds, best_epoch, best_val_acc, device, ...
    curves.png      loss and accuracy curves

The data path follows airbench: the uint8 train split sits on the training device and each batch is
indexed, converted and augmented there by `tasks.augment.BatchAugmenter`. A checkpoint is written
atomically after every epoch; a re-run with the same params resumes from it and, on CPU with
`train.deterministic`, ends with exactly the weights of an uninterrupted run (every epoch reseeds its
generators from (seed, epoch), so nothing depends on how the run was split into processes).

The loop knows nothing of MLflow: it calls `log(metrics, step)` once per epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from prefect import task
from torch import Tensor, nn

import models
from tasks import augment as aug
from tasks import distributed
from tasks.files import atomic_path, read_json, write_json
from tasks.layout import Layout
from tasks.optim import ModelEMA, Schedule, build_optimizer
from tasks.params import Params, TrainParams

Log = Callable[[dict[str, float], int], None]
CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- device and seeds


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_torch(tp: TrainParams, device: torch.device) -> None:
    if tp.num_threads:
        torch.set_num_threads(tp.num_threads)
    if tp.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
        # memory: a debugging aid that costs ~4 % of a small CPU model's step, not needed for equality.
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = tp.cudnn_benchmark and not tp.deterministic
        torch.backends.cudnn.deterministic = tp.deterministic
        torch.backends.cuda.matmul.allow_tf32 = not tp.deterministic
        torch.backends.cudnn.allow_tf32 = not tp.deterministic


def epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"zooflow:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def memory_format(tp: TrainParams, device: torch.device) -> torch.memory_format:
    """NHWC activations (channels_last): tensor cores on CUDA; on CPU oneDNN's convolutions are also
    faster in it (measured: ResNet-20 -15 %, LeNet-5 -7 % CPU time per step)."""
    use = tp.channels_last and device.type in ("cuda", "cpu")
    return torch.channels_last if use else torch.contiguous_format


def autocast(tp: TrainParams, device: torch.device):
    use = tp.amp == "bf16" or (tp.amp == "auto" and device.type == "cuda")
    if use and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------- data on the device


class DeviceData:
    """One split as uint8 NCHW where training wants it: on the device, in RAM, or memory-mapped.

    Planar, not channels_last: the crop's gather and the per-channel normalisation are 1.3-1.8x faster
    on planes (measured on CPU); the one float batch is converted for a channels_last model after."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device, placement: str = "auto"):
        self.device = device
        self.n = len(labels)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        nbytes = int(np.prod(images.shape))
        if placement == "auto":
            placement = _auto_placement(nbytes, device)
        self.placement = placement
        if placement == "mmap":
            self.images = None
            self.mmap = images
        else:
            x = aug.to_nchw(np.asarray(images))
            if placement == "device":
                x = x.to(device)
            elif device.type == "cuda":
                x = x.pin_memory()
            self.images = x

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The images (uint8 NCHW) and labels at `idx`, on the device."""
        if self.images is None:  # memory-mapped: read the rows in file order
            idx = idx.cpu().sort().values
            x = aug.to_nchw(np.asarray(self.mmap[idx.numpy()])).to(self.device, non_blocking=True)
        elif self.images.device == self.device:
            idx = idx.to(self.device)
            x = self.images.index_select(0, idx)
        else:
            x = self.images.index_select(0, idx.cpu()).to(self.device, non_blocking=True)
        return x, self.labels[idx.to(self.device)]


def _auto_placement(nbytes: int, device: torch.device) -> str:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < 0.4 * free:
            return "device"
    elif device.type != "mps":
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 1 << 40
        return "device" if nbytes < 0.5 * available else "mmap"
    return "ram" if nbytes < (1 << 33) else "mmap"


# --------------------------------------------------------------------------- loss and evaluation


def criterion(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against int labels or soft targets (mixup/cutmix), with label smoothing."""
    logits = logits.float()
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / logits.shape[1]
    return torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()


def model_loss(model: nn.Module, out: Any, targets: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """(loss, main logits). GoogLeNet in train mode returns (logits, aux...): main + w x each aux."""
    if isinstance(out, (tuple, list)):
        main, aux = out[0], out[1:]
        loss = criterion(main, targets, smoothing)
        weight = getattr(model, "aux_loss_weight", 0.3)
        for a in aux:
            loss = loss + weight * criterion(a, targets, smoothing)
        return loss, main
    return criterion(out, targets, smoothing), out


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceData, mean, std, batch_size: int, tp: TrainParams, device) -> dict:
    """Loss and accuracy of `model` (eval mode) on a split."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    fmt = memory_format(tp, device)
    for start in range(0, data.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n), device=device)
        xb, yb = data.batch(idx)
        x = aug.normalize(xb, mean, std).contiguous(memory_format=fmt)
        with autocast(tp, device):
            out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        total_loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(1, data.n)
    return {"loss": float(total_loss) / n, "acc": float(correct) / n}


# --------------------------------------------------------------------------- feedback


class Progress:
    """A tqdm bar per epoch on a terminal; one line per epoch otherwise."""

    def __init__(self, mode: str, arch: str, epochs: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.arch, self.epochs = mode, arch, epochs
        self.bar = None

    def start(self, epoch: int, steps: int) -> None:
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"{self.arch} {epoch + 1}/{self.epochs}", leave=False, unit="step")

    def step(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def end(self, row: dict) -> None:
        line = (
            f"[train {self.arch}] epoch {row['epoch'] + 1}/{self.epochs} "
            f"loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
            f"lr {row['lr']:.3g} {row['img_per_s']:.0f} img/s"
        )
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "off":
            print(line, file=sys.stderr, flush=True)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax2.plot(epochs, [h["train_acc"] for h in history], label="train")
    ax2.plot(epochs, [h["val_acc"] for h in history], label="val")
    ax2.set(xlabel="epoch", ylabel="accuracy")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a reader (or a resumed run) sees the previous checkpoint or this one, never half."""
    if not distributed.is_main():  # DDP: every rank holds the same state; rank 0 writes it
        return
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a foreign or corrupt file: start over rather than fail
        return None


def fingerprint(params: Params, tp: TrainParams, arch: str, meta: dict, stats: aug.Stats) -> str:
    """What a checkpoint was trained with; a resume needs the same."""
    keep = tp.model_dump(mode="json", exclude={"architectures", "overrides", "resume", "progress", "num_threads"})
    keep["model_options"] = tp.model_options.get(arch, {})
    blob = {
        "arch": arch,
        "seed": params.seed,
        "train": keep,
        "augment": params.augment.model_dump(mode="json", exclude={"preview_images"}),
        "data": meta.get("data_sha256"),
        "stats": stats.to_json(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- the stage


def build_model(arch: str, build_args: dict) -> nn.Module:
    return models.build(
        arch,
        num_classes=build_args["num_classes"],
        in_channels=build_args["in_channels"],
        image_size=build_args["image_size"],
        **build_args.get("options", {}),
    )


def train(params: Params, layout: Layout, arch: str, run_id: str | None = None, log: Log | None = None) -> dict:
    """Train `arch` on the prepared train split, keep its best epoch on val; see the module doc."""
    if run_id is not None and log is None:
        from tasks import tracking

        log = tracking.metric_logger(params, run_id)
    tp = params.train.for_arch(arch)
    info = models.available()[arch]
    device = distributed.init(pick_device(params.device))  # under torchrun: join the group, this rank's GPU
    configure_torch(tp, device)

    data = aug.prepared(layout)
    meta = data.meta
    train_x, train_y = data.split("train")
    val_x, val_y = data.split("val")
    shape = train_x.shape
    build_args = {
        "num_classes": int(meta.get("num_classes", int(np.max(train_y)) + 1)),
        "in_channels": int(meta.get("channels", shape[-1] if len(shape) == 4 else 1)),
        "image_size": int(meta.get("image_size", shape[1])),
        "options": dict(tp.model_options.get(arch, {})),
    }
    stats = aug.load_stats(layout)
    out = layout.train(arch)
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(params.seed)
    model = build_model(arch, build_args).to(device)
    common = {
        "arch": arch,
        "family": info.family,
        "params": models.count_params(model),
        "device": str(device),
        "run_id": run_id,
        "model": build_args,
        "normalization": {"mean": list(stats.mean), "std": list(stats.std)},
    }
    if info.trained_by == "fit":
        return _fit(model, common, train_x, train_y, val_x, val_y, stats, tp, device, out, log)

    return _train_sgd(params, tp, arch, model, common, train_x, train_y, val_x, val_y, stats, meta, device, out, run_id, log)


def _fit(model, common, train_x, train_y, val_x, val_y, stats, tp, device, out: Path, log) -> dict:
    """kNN, naive Bayes: one `fit` on the whole normalised train split, no SGD."""
    start = time.perf_counter()
    x = aug.normalize(aug.to_nchw(np.asarray(train_x)).to(device), stats.mean, stats.std)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.int64, device=device)
    model.fit(x, y)
    seconds = time.perf_counter() - start
    del x
    val = evaluate(model, DeviceData(val_x, val_y, device, "device"), stats.mean, stats.std, 256, tp, device)
    row = {
        "epoch": 0,
        "train_loss": float("nan"),
        "train_acc": float("nan"),
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        "lr": 0.0,
        "img_per_s": len(train_y) / max(seconds, 1e-9),
        "seconds": seconds,
    }
    _save_weights(out / "model.pt", model.state_dict())
    write_json(out / "history.json", [row])
    if log is not None:
        log({"val_loss": val["loss"], "val_acc": val["acc"]}, 0)
    summary = {
        **common,
        "trained_by": "fit",
        "train_seconds": seconds,
        "epochs_run": 0,
        "best_epoch": 0,
        "best_val_acc": val["acc"],
        "best_val_loss": val["loss"],
        "stopped_early": False,
        "resumed_from_epoch": None,
        "ema": False,
    }
    write_json(out / "train.json", summary)
    return summary


def _save_weights(path: Path, state: dict) -> None:
    if not distributed.is_main():  # DDP: rank 0 writes
        return
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)


def _train_sgd(params, tp, arch, model, common, train_x, train_y, val_x, val_y, stats, meta, device, out, run_id, log):
    n = len(train_y)
    bs = min(tp.batch_size, n)
    steps = distributed.steps_per_epoch(n, bs)  # drop the ragged last batch (a batch of 1 breaks BatchNorm)
    if tp.max_steps_per_epoch:
        steps = min(steps, tp.max_steps_per_epoch)

    model = model.to(memory_format=memory_format(tp, device))
    optimizer = build_optimizer(model, tp.optimizer, device)
    schedule = Schedule(tp.schedule, tp.epochs, steps)
    ema = ModelEMA(model, tp.ema_decay) if tp.ema_decay > 0 else None
    num_classes = common["model"]["num_classes"]
    augmenter = aug.BatchAugmenter(params.augment, stats, num_classes, device)
    train_data = DeviceData(train_x, train_y, device, tp.data_placement)
    val_data = DeviceData(val_x, val_y, device, "device" if train_data.placement == "device" else "ram")
    eval_bs = max(256, 2 * bs)

    main = distributed.is_main()  # DDP: only rank 0 writes files and logs
    log = log if main else None
    ckpt_path = out / "checkpoint.pt"
    fp = fingerprint(params, tp, arch, meta, stats)
    history: list[dict] = []
    best = {"epoch": -1, "val_acc": -1.0, "val_loss": math.inf}
    start_epoch, global_step, bad_epochs, stopped = 0, 0, 0, False
    resumed_from = None
    ckpt = load_checkpoint(ckpt_path) if tp.resume else None
    if ckpt is not None and ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("fingerprint") == fp and (out / "model.pt").exists():
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"], device)
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        history, best = list(ckpt["history"]), dict(ckpt["best"])
        bad_epochs, stopped = int(ckpt["bad_epochs"]), bool(ckpt["stopped"])
        resumed_from = start_epoch
        if log is not None and ckpt.get("run_id") != run_id:  # a new MLflow run: give it the whole story
            for row in history:
                log(_metrics(row), row["epoch"])

    fwd_model = distributed.wrap(model, device)  # DDP under torchrun; the model itself otherwise
    if tp.compile:
        try:
            fwd_model = torch.compile(fwd_model)
        except Exception as exc:  # no compiler here: eager is still correct
            print(f"[train {arch}] torch.compile unavailable ({exc}); running eager", file=sys.stderr)

    fmt = memory_format(tp, device)
    progress = Progress(tp.progress if main else "off", arch, tp.epochs)
    smoothing = tp.label_smoothing
    for epoch in range(start_epoch, tp.epochs):
        if stopped:
            break
        es = epoch_seed(params.seed, epoch)
        torch.manual_seed(es)  # dropout, stochastic depth: the global generator
        g_cpu = torch.Generator().manual_seed(es)
        g_dev = g_cpu if device.type == "cpu" else torch.Generator(device).manual_seed(es ^ 0x5EED)
        # On the device: no copy per step. Under DDP each rank takes its shard of the permutation.
        perm = distributed.shard(torch.randperm(n, generator=g_cpu)).to(device)
        if distributed.active():  # each rank's shard gets its own augmentation draws
            g_dev = torch.Generator(device).manual_seed(distributed.rank_seed(es ^ 0x5EED))

        model.train()
        progress.start(epoch, steps)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        lr = schedule.set_lr(optimizer, global_step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(steps):
            xb, yb = train_data.batch(perm[i * bs : (i + 1) * bs])
            x, targets = augmenter(xb, yb, g_dev)
            x = x.contiguous(memory_format=fmt)
            lr = schedule.set_lr(optimizer, global_step)
            with autocast(tp, device):
                output = fwd_model(x)
                loss, logits = model_loss(model, output, targets, smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tp.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            global_step += 1
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if progress.bar is not None:  # the .item() syncs a GPU: only every 10th step
                progress.step(1, **({"loss": f"{loss.item():.3f}"} if i % 10 == 0 else {}))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        distributed.all_reduce_sum(loss_sum, correct)
        seen = steps * bs * distributed.world_size()

        selected = ema.module if ema is not None else model
        val = evaluate(selected, val_data, stats.mean, stats.std, eval_bs, tp, device)
        row = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(1, seen),
            "train_acc": float(correct) / max(1, seen),
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": lr,
            "img_per_s": seen / max(seconds, 1e-9),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
        }
        if ema is not None:
            raw = evaluate(model, val_data, stats.mean, stats.std, eval_bs, tp, device)
            row["val_acc_raw"], row["val_loss_raw"] = raw["acc"], raw["loss"]
        history.append(row)
        schedule.observe(val["acc"])

        if val["acc"] > best["val_acc"]:
            best = {"epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"]}
            bad_epochs = 0
            _save_weights(out / "model.pt", selected.state_dict())
        else:
            bad_epochs += 1
            if tp.early_stopping and bad_epochs >= tp.early_stopping:
                stopped = True
        save_checkpoint(
            ckpt_path,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fp,
                "arch": arch,
                "run_id": run_id,
                "epoch": epoch + 1,
                "global_step": global_step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": _rng_state(device),
                "best": best,
                "bad_epochs": bad_epochs,
                "stopped": stopped,
                "history": history,
            },
        )
        progress.end(row)
        if log is not None:
            log(_metrics(row), epoch)

    if not main:  # DDP: rank 0 writes the outputs
        return {**common, "rank": distributed.rank(), "epochs_run": len(history), "best_val_acc": best["val_acc"]}
    write_json(out / "history.json", history)
    if history:
        plot_curves(history, out / "curves.png", f"{arch}: best val acc {best['val_acc']:.4f} (epoch {best['epoch'] + 1})")
    summary = {
        **common,
        "trained_by": "sgd",
        "train_seconds": sum(h["seconds"] for h in history),
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_acc": best["val_acc"],
        "best_val_loss": best["val_loss"],
        "stopped_early": stopped,
        "resumed_from_epoch": resumed_from,
        "ema": ema is not None,
        "img_per_s": float(np.mean([h["img_per_s"] for h in history])) if history else 0.0,
    }
    write_json(out / "train.json", summary)
    return summary


def _metrics(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)}


def load_trained(params: Params, layout: Layout, arch: str, device: str | torch.device = "cpu") -> nn.Module:
    """The best-val model of `arch`, in eval mode, rebuilt from train.json and model.pt."""
    out = layout.train(arch)
    summary = read_json(out / "train.json")
    model = build_model(arch, summary["model"])
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    load_state_resizing(model, state)
    return model.to(device).eval()


def load_state_resizing(model: nn.Module, state: dict[str, Tensor]) -> None:
    """load_state_dict, letting buffers take the saved shape (a kNN's memory is sized by its data)."""
    own = dict(model.named_buffers())
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            owner_name, _, attr = key.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner.register_buffer(attr, torch.empty_like(value, device=own[key].device))
    model.load_state_dict(state)


def train_tracked(params: Params, layout: Layout, arch: str, parent_run_id: str | None = None) -> dict:
    """train() with MLflow: a new run for `arch` (a child of the pipeline's run, if given); params
    before, per-epoch metrics during, summary and curves after."""
    from tasks import tracking

    run_id = tracking.new_arch_run(params, layout, arch, parent_run_id)
    tp = params.train.for_arch(arch)
    try:
        tracking.log_params(
            params,
            run_id,
            {
                "arch": arch,
                "seed": params.seed,
                "device": params.device,
                "train": tp.model_dump(mode="json", exclude={"architectures", "overrides", "model_options"}),
                "model_options": tp.model_options.get(arch, {}),
                "augment": params.augment.model_dump(mode="json"),
            },
        )
    except Exception as exc:  # a re-run into the same run with changed params: MLflow refuses, training need not
        print(f"[train {arch}] MLflow params not logged: {exc}", file=sys.stderr)
    summary = train(params, layout, arch, run_id=run_id, log=tracking.metric_logger(params, run_id))
    tracking.log_metrics(
        params,
        run_id,
        {k: summary[k] for k in ("best_val_acc", "best_val_loss", "train_seconds", "params", "best_epoch") if k in summary},
    )
    out = layout.train(arch)
    for name in ("train.json", "history.json", "curves.png"):
        if (out / name).exists():
            tracking.log_artifact(params, run_id, out / name, "train")
    return summary


train_task = task(name="train")(train_tracked)
