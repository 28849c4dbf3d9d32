"""The train stage: one architecture, trained on `train`, its best epoch chosen on `val`.

Writes `outputs/train/<arch>/`:
    model.pt        the best-val weights (a plain state_dict: torch.load(..., weights_only=True))
    checkpoint.pt   the last epoch: model, optimizer, schedule, EMA, RNG, epoch, best-so-far, history
    history.json    per epoch: train loss/acc, val loss/acc, lr, img/s, seconds
    train.json      the summary: arch, params, train_seconds, best_epoch, best_val_acc, device, where it
                    started (`init`: the source, its sha256, the parent version, what was adapted), ...
    curves.png      loss and accuracy curves

The work is `tasks.engine`'s; this module reads the prepared data, builds the model, starts it from
`train.init` (`tasks.init_weights`), writes the outputs and, in `train_tracked`, logs the run to MLflow.
"""

from __future__ import annotations

import sys

import numpy as np

import models
from tasks import caching, distributed, engine, init_weights
from tasks.errors import UserError
from tasks.files import write_json
from tasks.layout import Layout
from tasks.params import Params, TrainParams
from tasks.readers import PreparedData, build_model, load_prepared, load_stats


def build_args(tp: TrainParams, arch: str, data: PreparedData) -> dict:
    """How the model is built: the data's sizes and the builder's options (kept in train.json); from
    torchvision's weights, the ImageNet variant (`init_weights.build_options`)."""
    options = init_weights.build_options(arch, tp.init, dict(tp.model_options.get(arch, {})))
    return {"num_classes": data.num_classes, "in_channels": data.channels, "image_size": data.image_size,
            "options": options}


def train(params: Params, layout: Layout, arch: str, run_id: str | None = None, log: engine.Log | None = None,
          probe: engine.Probe | None = None, curves: bool = True) -> dict:
    """Train `arch` on the prepared train split, keep its best epoch on val; see the module doc.
    `probe` measures the model after every epoch into history.json, and `curves=False` leaves out
    curves.png (the lab's experiments: their runs are plotted together)."""
    if run_id is not None and log is None:
        from tasks import tracking

        log = tracking.metric_logger(params, run_id)
    tp = params.train.for_arch(arch)
    info = models.available()[arch]
    device = distributed.init(engine.pick_device(params.device))  # under torchrun: join the group, this rank's GPU
    engine.configure_torch(tp, device)

    data = load_prepared(layout.prepared)
    stats = load_stats(layout)
    out = layout.train(arch)
    out.mkdir(parents=True, exist_ok=True)
    args = build_args(tp, arch, data)

    engine.seed_everything(params.seed)
    model = build_model(arch, args)
    start = None
    if tp.init != init_weights.SCRATCH:
        if info.trained_by == "fit":
            raise UserError(f"train.init: {arch} is fitted, not trained: it cannot start from weights")
        start = init_weights.load_into(model, init_weights.resolve(params, layout, arch), arch, data.classes,
                                       new_head=tp.finetune.new_head)
    model = model.to(device)
    common = {"arch": arch, "family": info.family, "params": models.count_params(model), "device": str(device),
              "run_id": run_id, "model": args, "classes": data.classes,
              "normalization": {"mean": list(stats.mean), "std": list(stats.std)},
              "init": start, "finetune": tp.finetune.model_dump()}
    splits = {"train": data.split("train"), "val": data.split("val")}
    if info.trained_by == "fit":
        result = engine.fit_closed_form(model=model, **splits, stats=stats, tp=tp, device=device, out=out)
    else:
        result = engine.train_sgd(model=model, name=arch, **splits, stats=stats, augment=params.augment, tp=tp,
                                  seed=params.seed, num_classes=data.num_classes, device=device, out=out,
                                  fingerprint=caching.cache_key("train", params, layout, arch), run_id=run_id, log=log,
                                  probe=probe)
    if not distributed.is_main():  # DDP: rank 0 writes the outputs
        return {**common, "rank": distributed.rank(), "epochs_run": result["epochs_run"],
                "best_val_acc": result["best"]["val_acc"]}
    return write_outputs(out, arch, common, result, info.trained_by, curves)


def write_outputs(out, arch: str, common: dict, result: dict, trained_by: str, curves: bool = True) -> dict:
    """history.json, curves.png and the summary train.json."""
    history, best = result["history"], result["best"]
    write_json(out / "history.json", history)
    if history and trained_by == "sgd" and curves:
        engine.plot_curves(history, out / "curves.png",
                           f"{arch}: best val acc {best['val_acc']:.4f} (epoch {best['epoch'] + 1})")
    summary = {
        **common,
        "trained_by": trained_by,
        "train_seconds": sum(h["seconds"] for h in history),
        "epochs_run": result["epochs_run"],
        "best_epoch": best["epoch"],
        "best_val_acc": best["val_acc"],
        "best_val_loss": best["val_loss"],
        "stopped_early": result["stopped_early"],
        "resumed_from_epoch": result["resumed_from_epoch"],
        "ema": result["ema"],
    }
    if trained_by == "sgd":
        summary["img_per_s"] = float(np.mean([h["img_per_s"] for h in history])) if history else 0.0
    write_json(out / "train.json", summary)
    return summary


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
    except Exception as exc:  # noqa: BLE001 - a re-run into the same run with changed params: MLflow refuses
        print(f"[train {arch}] MLflow params not logged: {exc}", file=sys.stderr)
    with tracking.ending(params, run_id):  # evaluate logs into it later, and ends it again
        summary = train(params, layout, arch, run_id=run_id, log=tracking.metric_logger(params, run_id))
        tracking.log_metrics(
            params,
            run_id,
            {k: summary[k] for k in ("best_val_acc", "best_val_loss", "train_seconds", "params", "best_epoch")
             if k in summary},
        )
        tags = init_weights.lineage_tags({arch: summary.get("init")})
        if tags:  # where it started: the source, and the registered version it grew from
            tracking.set_tags(params, run_id, tags)
        out = layout.train(arch)
        for name in ("train.json", "history.json", "curves.png"):
            if (out / name).exists():
                tracking.log_artifact(params, run_id, out / name, "train")
    return summary
