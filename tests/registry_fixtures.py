"""Shared test data for the evaluate..promote tests: real digits at 16 px, two tiny real models.

`pipeline_state(root)` ingests the embedded digits dataset into `root`, writes normalisation
stats, fits a kNN and a linear softmax classifier (a few seconds on a CPU) and evaluates both with
`tasks.evaluate.evaluate_model`, so `outputs/eval/<arch>/` holds what the ensemble and register
stages read. MLflow points at a sqlite file and artifact folder inside `root`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import models
from tasks.evaluate import evaluate_model, preprocessing
from tasks.files import write_json
from tasks.ingest import ingest, load_prepared
from tasks.layout import Layout
from tasks.params import Params, load_params
from tasks.serving import preprocess

ARCHS = ("knn", "linear")


@dataclass
class State:
    root: Path
    params: Params
    layout: Layout
    modules: dict
    prep: dict
    classes: list[str]


@contextlib.contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def make_params(root: Path, *overrides: str) -> Params:
    return load_params(root / "params.yaml", [
        "data.image_size=16", "data.workers=1", f"train.architectures=[{','.join(ARCHS)}]",
        f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}", "evaluate.latency_repeats=3",
        "evaluate.throughput_batch=32", "register.model_name=digits-test", *overrides])


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 150) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build("linear", num_classes=num_classes, in_channels=x.shape[1], image_size=x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def pipeline_state(root: Path, *overrides: str) -> State:
    root.mkdir(parents=True, exist_ok=True)
    params = make_params(root, *overrides)
    layout = Layout(root)
    with chdir(root):
        ingest(params, layout)
    data = load_prepared(layout.prepared)
    images, labels = data.split("train")
    x01 = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
    write_json(layout.augment / "stats.json", {"mean": x01.mean((0, 2, 3)).tolist(), "std": x01.std((0, 2, 3)).tolist()})
    prep = preprocessing(layout, data.meta)
    x = preprocess(np.asarray(images), **prep)
    y = torch.from_numpy(np.asarray(labels))
    kwargs = {"num_classes": data.num_classes, "in_channels": data.channels, "image_size": data.image_size}
    knn = models.build("knn", **kwargs)
    knn.fit(x, y)
    modules = {"knn": knn.eval(), "linear": fit_linear(x, y, data.num_classes)}
    splits = {s: data.split(s) for s in ("val", "test")}
    for arch, module in modules.items():
        n = sum(p.numel() for p in module.parameters())
        write_json(layout.train(arch) / "train.json", {"arch": arch, "params": n, "train_seconds": 1.5,
                                                      "best_epoch": 1, "device": "cpu", "build_kwargs": kwargs})
        evaluate_model(module, splits, data.classes, prep, params, layout.eval(arch))
    return State(root, params, layout, modules, prep, data.classes)


def register_arch(state: State, arch: str = "linear", members: dict | None = None, vote: str = "soft",
                  params: Params | None = None) -> dict:
    """Register `arch` (or an ensemble of `members`) from `state` as `tasks.register.register` would."""
    from tasks.files import read_json
    from tasks.register import register_candidate

    params = params or state.params
    members = members or {arch: 1.0}
    metrics = {a: read_json(state.layout.eval(a) / "metrics.json") for a in members}
    kind = "single" if len(members) == 1 else "ensemble"
    name = arch if kind == "single" else f"ensemble:{vote}"
    first = metrics[next(iter(members))]
    cand = {"kind": kind, "name": name, "members": members, "vote": vote, "val": first["val"], "test": first["test"]}
    data = load_prepared(state.layout.prepared)
    kwargs = {"num_classes": data.num_classes, "in_channels": data.channels, "image_size": data.image_size}
    bundle = {a: (state.modules[a], kwargs, w) for a, w in members.items()}
    lineage = {"data_sha256": data.meta["data_sha256"], "classes": data.classes, "image_size": data.image_size,
               "channels": data.channels, "git_commit": "test", "registered_at": "now", "runs": {},
               "train_seconds": 1.5 * len(members)}
    train_info = {a: read_json(state.layout.train(a) / "train.json") for a in members}
    images, labels = data.split("val")
    with chdir(state.root):
        return register_candidate(params, state.layout, cand, bundle, data.classes, state.prep, lineage,
                                  train_info, np.asarray(images), np.asarray(labels))
