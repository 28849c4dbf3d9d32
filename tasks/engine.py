"""The training engine: one model, trained on one split, its best epoch chosen on another.

It knows nothing of Prefect, MLflow or the project's folders beyond the one it is given: it imports
torch, numpy and the params schema, so `bench/` runs it on a machine that has only those. The stage
(`tasks.train`) reads the prepared data, builds the model and calls `train_sgd` or `fit_closed_form`.

The data path follows airbench: the uint8 train split sits on the training device (`DeviceData`) and
each batch is indexed, converted and augmented there by `tasks.augment.BatchAugmenter`. Pieces, as in
timm's train.py:

    TrainState        everything a resumed run needs; saves and restores itself in one place
    epoch_generators  every epoch reseeds from (seed, epoch): a resumed run draws what an uninterrupted one does
    train_one_epoch   the step loop
    evaluate          loss and accuracy of a model on a split
    train_sgd         the epoch loop: resume, train, select on val, early stop, checkpoint

A checkpoint is written atomically after every epoch; with `train.deterministic` on CPU a resumed run
ends with exactly the weights of an uninterrupted one. A train or val loss that is not finite, or has
exploded, stops the run with `TrainingDiverged`: a diverged model is a failure, never a result.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks import augment as aug
from tasks import distributed
from tasks.errors import UserError
from tasks.files import atomic_path
from tasks.optim import Freeze, ModelEMA, Schedule, build_optimizer
from tasks.params import AugmentParams, TrainParams

Log = Callable[[dict[str, float], int], None]
# Measures the model after an epoch (before the epoch is recorded); its numbers join the epoch's row
# in the history. The lab's measurements (tasks/measures.py): gradient norms, effective step sizes.
Probe = Callable[["TrainState"], dict[str, float]]
CHECKPOINT_FORMAT = 1


class TrainingDiverged(UserError):
    """The loss became NaN, infinite or exploded: the recipe (usually the learning rate) is at fault."""

    def __init__(self, epoch: int, what: str, loss: float):
        self.epoch, self.loss = epoch, loss
        super().__init__(f"diverged at epoch {epoch + 1} ({what} {loss:.3g})")


def explosion_limit(num_classes: int) -> float:
    """A loss over a thousand times chance (ln K): weights that blew up."""
    return 1000 * math.log(max(num_classes, 2))


def check_diverged(row: dict, num_classes: int) -> None:
    """Raise `TrainingDiverged` when an epoch's train or val loss is not finite, or its train loss is over
    the explosion limit: a model whose weights blew up, which no later epoch brings back.

    A huge but finite val loss alone is not decided here: a deep BN network gives one in eval mode while
    its running statistics lag its first epochs' weights (a plain-56 after one epoch: val loss ~3e6,
    train loss 2.2), and it settles as training slows. `check_kept` decides it at the end."""
    limit = explosion_limit(num_classes)
    for key, what in (("train_loss", "loss"), ("val_loss", "val loss")):
        value = row.get(key)
        if value is None:
            continue
        exploded = key == "train_loss" and value > limit
        if not math.isfinite(value) or exploded:
            raise TrainingDiverged(row["epoch"], what, value)


def check_kept(best: dict, num_classes: int) -> None:
    """Raise `TrainingDiverged` when the epoch training keeps (the best on val) has a val loss over the
    explosion limit: no epoch brought it back (an MLP at lr 1000: train loss 2.3, val loss 1.4e7)."""
    if best["epoch"] >= 0 and best["val_loss"] > explosion_limit(num_classes):
        raise TrainingDiverged(best["epoch"], "val loss, at its best epoch", best["val_loss"])


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
        raise UserError("device: cuda was asked for, but torch sees no CUDA device; use device: auto or cpu")
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


def epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(shuffle generator on the CPU, augmentation generator on the device) for `epoch`; also reseeds the
    global generator (dropout, stochastic depth). Under DDP each rank augments its shard with its own draws."""
    es = epoch_seed(seed, epoch)
    torch.manual_seed(es)
    g_cpu = torch.Generator().manual_seed(es)
    g_dev = g_cpu if device.type == "cpu" else torch.Generator(device).manual_seed(es ^ 0x5EED)
    if distributed.active():
        g_dev = torch.Generator(device).manual_seed(distributed.rank_seed(es ^ 0x5EED))
    return g_cpu, g_dev


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
def evaluate(model: nn.Module, data: DeviceData, *, stats: aug.Stats, batch_size: int, tp: TrainParams,
             device: torch.device) -> dict:
    """Loss and accuracy of `model` (eval mode) on a split."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    fmt = memory_format(tp, device)
    for start in range(0, data.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n), device=device)
        xb, yb = data.batch(idx)
        x = aug.normalize(xb, stats.mean, stats.std).contiguous(memory_format=fmt)
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

    def __init__(self, mode: str, name: str, epochs: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.name, self.epochs = mode, name, epochs
        self.bar = None

    def start(self, epoch: int, steps: int) -> None:
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"{self.name} {epoch + 1}/{self.epochs}", leave=False, unit="step")

    def step(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def end(self, row: dict) -> None:
        line = (
            f"[train {self.name}] epoch {row['epoch'] + 1}/{self.epochs} "
            f"{'(classifier only) ' if row.get('backbone_frozen') else ''}"
            f"loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
            f"lr {row['lr']:.3g} {row['img_per_s']:.0f} img/s"
        )
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "off":
            print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- state and checkpoints


@dataclass
class TrainState:
    """The model, its optimiser, schedule and EMA, and the loop's counters: what a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: ModelEMA | None = None
    epoch: int = 0  # epochs completed
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": -1, "val_acc": -1.0, "val_loss": math.inf})
    bad_epochs: int = 0
    stopped: bool = False

    @property
    def selected(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self, device: torch.device) -> dict:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": _rng_state(device),
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "history": self.history,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"], device)
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history, self.best = list(state["history"]), dict(state["best"])
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a reader (or a resumed run) sees the previous checkpoint or this one, never half."""
    if not distributed.is_main():  # DDP: every rank holds the same state; rank 0 writes it
        return
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none. One that cannot be read as weights (corrupt,
    truncated, or holding pickled code) is never silently dropped: it is moved aside with a warning."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: keep it for inspection, start over
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        print(f"warning: {path} is not a readable checkpoint ({reason}); moved it to {aside.name} and "
              f"training starts from scratch", file=sys.stderr, flush=True)
        return None


def save_weights(path: Path, state: dict) -> None:
    if not distributed.is_main():  # DDP: rank 0 writes
        return
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume(state: TrainState, path: Path, *, fingerprint: str, device: torch.device) -> str | None | bool:
    """Restore `state` from the checkpoint at `path` if it was trained with the same `fingerprint`.

    Returns the MLflow run id the checkpoint was logged to (None if none), or False when not resumed."""
    ckpt = load_checkpoint(path)
    if ckpt is None or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("fingerprint") != fingerprint:
        return False
    state.load_state_dict(ckpt, device)
    return ckpt.get("run_id")


# --------------------------------------------------------------------------- the loops


def train_one_epoch(*, state: TrainState, forward: nn.Module, data: DeviceData, augmenter: aug.BatchAugmenter,
                    perm: Tensor, steps: int, batch_size: int, generator: torch.Generator, tp: TrainParams,
                    device: torch.device, progress: Progress, frozen: Sequence[nn.Module] = ()) -> dict:
    """`steps` optimiser steps over the batches of `perm`; returns the epoch's train loss/acc and timing.
    The `frozen` modules stay in eval mode (a linear probe: `optim.Freeze`)."""
    model, optimizer, schedule = state.model, state.optimizer, state.schedule
    fmt = memory_format(tp, device)
    model.train()
    for module in frozen:
        module.training = False
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    lr = schedule.set_lr(optimizer, state.global_step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        xb, yb = data.batch(perm[i * batch_size : (i + 1) * batch_size])
        x, targets = augmenter(xb, yb, generator)
        x = x.contiguous(memory_format=fmt)
        lr = schedule.set_lr(optimizer, state.global_step)
        with autocast(tp, device):
            output = forward(x)
            loss, logits = model_loss(model, output, targets, tp.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tp.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        optimizer.step()
        if state.ema is not None:
            state.ema.update(model)
        state.global_step += 1
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        if progress.bar is not None:  # the .item() syncs a GPU: only every 10th step
            progress.step(1, **({"loss": f"{loss.item():.3f}"} if i % 10 == 0 else {}))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    distributed.all_reduce_sum(loss_sum, correct)
    seen = max(1, steps * batch_size * distributed.world_size())
    return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen, "lr": lr,
            "img_per_s": seen / max(seconds, 1e-9), "seconds": seconds, "cpu_seconds": cpu_seconds}


def train_sgd(*, model: nn.Module, name: str, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              stats: aug.Stats, augment: AugmentParams, tp: TrainParams, seed: int, num_classes: int,
              device: torch.device, out: Path, fingerprint: str, run_id: str | None = None,
              log: Log | None = None, probe: Probe | None = None) -> dict:
    """Train `model` for `tp.epochs` on `train`, keep its best epoch on `val`.

    Writes `out/model.pt` (best-val weights) and `out/checkpoint.pt` (every epoch); resumes from the
    checkpoint when its `fingerprint` matches. Fine-tuning (`tp.finetune`): the backbone frozen for the
    first epochs (`optim.Freeze`), its own lr after (`optim.param_groups`). `probe`, if given, measures the
    model after every epoch into the epoch's row. Returns history, best, epochs run, stopped, resumed_from.
    """
    n = len(train[1])
    bs = min(tp.batch_size, n)
    steps = distributed.steps_per_epoch(n, bs)  # drop the ragged last batch (a batch of 1 breaks BatchNorm)
    if tp.max_steps_per_epoch:
        steps = min(steps, tp.max_steps_per_epoch)

    model = model.to(memory_format=memory_format(tp, device))
    state = TrainState(model=model, optimizer=build_optimizer(model, tp.optimizer, device, tp.finetune.backbone_lr_mult),
                       schedule=Schedule(tp.schedule, tp.epochs, steps),
                       ema=ModelEMA(model, tp.ema_decay) if tp.ema_decay > 0 else None)
    augmenter = aug.BatchAugmenter(augment, stats, num_classes, device)
    train_data = DeviceData(*train, device, tp.data_placement)
    val_data = DeviceData(*val, device, "device" if train_data.placement == "device" else "ram")
    eval_bs = max(256, 2 * bs)

    main = distributed.is_main()  # DDP: only rank 0 writes files and logs
    log = log if main else None
    ckpt_path = out / "checkpoint.pt"
    resumed_from = None
    if tp.resume and (out / "model.pt").exists():
        previous_run = resume(state, ckpt_path, fingerprint=fingerprint, device=device)
        if previous_run is not False:
            resumed_from = state.epoch
            if log is not None and previous_run != run_id:  # a new MLflow run: give it the whole story
                for row in state.history:
                    log(epoch_metrics(row), row["epoch"])

    freeze = Freeze(model, tp.finetune.freeze_epochs) if tp.finetune.freeze_epochs else None
    forward, forward_frozen = None, False
    progress = Progress(tp.progress if main else "off", name, tp.epochs)
    for epoch in range(state.epoch, tp.epochs):
        if state.stopped:
            break
        frozen = freeze is not None and freeze.frozen(epoch)
        if forward is None or frozen != forward_frozen:  # DDP takes the parameters that train when it wraps
            if freeze is not None:
                freeze.set(frozen)
            forward, forward_frozen = compiled(distributed.wrap(model, device), tp, name), frozen
        g_cpu, g_dev = epoch_generators(seed, epoch, device)
        # On the device: no copy per step. Under DDP each rank takes its shard of the permutation.
        perm = distributed.shard(torch.randperm(n, generator=g_cpu)).to(device)
        progress.start(epoch, steps)
        row = train_one_epoch(state=state, forward=forward, data=train_data, augmenter=augmenter, perm=perm,
                              steps=steps, batch_size=bs, generator=g_dev, tp=tp, device=device, progress=progress,
                              frozen=freeze.modules if frozen else ())
        val = evaluate(state.selected, val_data, stats=stats, batch_size=eval_bs, tp=tp, device=device)
        row = {"epoch": epoch, **row, "val_loss": val["loss"], "val_acc": val["acc"]}
        if freeze is not None:
            row["backbone_frozen"] = frozen
        check_diverged(row, num_classes)
        if probe is not None:
            row.update(probe(state))
        if state.ema is not None:
            raw = evaluate(model, val_data, stats=stats, batch_size=eval_bs, tp=tp, device=device)
            row["val_acc_raw"], row["val_loss_raw"] = raw["acc"], raw["loss"]
        _end_epoch(state, row, tp, out)
        save_checkpoint(ckpt_path, {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "arch": name,
                                    "run_id": run_id, **state.state_dict(device)})
        progress.end(row)
        if log is not None:
            log(epoch_metrics(row), epoch)
    if freeze is not None:
        freeze.set(False)
    check_kept(state.best, num_classes)
    return {"history": state.history, "best": state.best, "epochs_run": len(state.history),
            "stopped_early": state.stopped, "resumed_from_epoch": resumed_from, "ema": state.ema is not None}


def compiled(forward: nn.Module, tp: TrainParams, name: str) -> nn.Module:
    """`torch.compile(forward)` when asked for; eager (still correct) where no compiler is available."""
    if not tp.compile:
        return forward
    try:
        return torch.compile(forward)
    except Exception as exc:  # noqa: BLE001 - no compiler here
        print(f"[train {name}] torch.compile unavailable ({exc}); running eager", file=sys.stderr)
        return forward


def _end_epoch(state: TrainState, row: dict, tp: TrainParams, out: Path) -> None:
    """Record the epoch; keep the weights when val improved; count epochs without improvement."""
    state.history.append(row)
    state.epoch = row["epoch"] + 1
    state.schedule.observe(row["val_acc"])
    if row["val_acc"] > state.best["val_acc"]:
        state.best = {"epoch": row["epoch"], "val_acc": row["val_acc"], "val_loss": row["val_loss"]}
        state.bad_epochs = 0
        save_weights(out / "model.pt", state.selected.state_dict())
    else:
        state.bad_epochs += 1
        if tp.early_stopping and state.bad_epochs >= tp.early_stopping:
            state.stopped = True


def fit_closed_form(*, model: nn.Module, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    stats: aug.Stats, tp: TrainParams, device: torch.device, out: Path) -> dict:
    """kNN, naive Bayes: one `fit` on the whole normalised train split, no SGD. Writes `out/model.pt`."""
    start = time.perf_counter()
    x = aug.normalize(aug.to_nchw(np.asarray(train[0])).to(device), stats.mean, stats.std)
    y = torch.as_tensor(np.asarray(train[1]), dtype=torch.int64, device=device)
    model.fit(x, y)
    seconds = time.perf_counter() - start
    del x
    result = evaluate(model, DeviceData(*val, device, "device"), stats=stats, batch_size=256, tp=tp, device=device)
    row = {"epoch": 0, "train_loss": None, "train_acc": None, "val_loss": result["loss"], "val_acc": result["acc"],
           "lr": 0.0, "img_per_s": len(train[1]) / max(seconds, 1e-9), "seconds": seconds}
    save_weights(out / "model.pt", model.state_dict())
    return {"history": [row], "best": {"epoch": 0, "val_acc": result["acc"], "val_loss": result["loss"]},
            "epochs_run": 0, "stopped_early": False, "resumed_from_epoch": None, "ema": False}


def epoch_metrics(row: dict) -> dict[str, float]:
    """An epoch's row as metrics: the finite numbers only."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and v is not None and math.isfinite(v)}


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((ax1, "loss", "loss"), (ax2, "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], label="val")
        ax.set(xlabel="epoch", ylabel=label)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
