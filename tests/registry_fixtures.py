"""Shared test data for the evaluate..promote tests: real digits at 16 px, two tiny real models.

`pipeline_state(root)` runs the real ingest, augment, train and evaluate stages on the embedded
digits dataset at 16 px for a kNN and a linear softmax classifier (seconds on a CPU), so
`outputs/eval/<arch>/` holds what the ensemble and register stages read. MLflow points at a sqlite file and artifact folder inside `root`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.evaluate import preprocessing
from tasks.ingest import ingest, load_prepared
from tasks.layout import Layout
from tasks.params import Params, load_params

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


def pipeline_state(root: Path, *overrides: str) -> State:
    """Real stages: ingest, augment, train (kNN: a fit; linear: 2 epochs of SGD), evaluate."""
    from tasks.augment import augment
    from tasks.evaluate import evaluate
    from tasks.train import load_trained, train

    root.mkdir(parents=True, exist_ok=True)
    params = make_params(root, "train.epochs=2", "train.batch_size=16", "augment.crop_padding=0",
                         "augment.hflip=false", *overrides)
    layout = Layout(root)
    with chdir(root):
        ingest(params, layout)
        augment(params, layout)
        for arch in ARCHS:
            train(params, layout, arch)
            evaluate(params, layout, arch)
    data = load_prepared(layout.prepared)
    modules = {arch: load_trained(params, layout, arch) for arch in ARCHS}
    return State(root, params, layout, modules, preprocessing(layout, data.meta), data.classes)


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
