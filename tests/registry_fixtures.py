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

from tasks.readers import preprocessing
from tasks.ingest import ingest
from tasks.readers import load_prepared
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

    def copy(self, root: Path) -> "State":
        """The same trained state in a folder of its own (its own MLflow store): for a test that re-runs
        a stage with other params, so the shared outputs stay this session's."""
        import shutil

        shutil.copytree(self.root, root)
        params = make_params(root, "evaluate.tta=flip", f"register.model_name={self.params.register.model_name}")
        return State(root, params, Layout(root), self.modules, self.prep, self.classes)

    def with_params(self, *overrides: str) -> Params:
        """These params (same MLflow store, same model name) with `overrides`."""
        return make_params(self.root, "evaluate.tta=flip", f"register.model_name={self.params.register.model_name}",
                           *overrides)


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
    from tasks import caching
    from tasks.augment import augment
    from tasks.evaluate import evaluate
    from tasks.readers import load_trained
    from tasks.train import train

    root.mkdir(parents=True, exist_ok=True)
    params = make_params(root, "train.epochs=2", "train.batch_size=16", "augment.crop_padding=0",
                         "augment.hflip=false", *overrides)
    layout = Layout(root)
    with chdir(root):
        for stage, fn in (("ingest", ingest), ("augment", augment)):
            caching.run_stage(stage, fn, params, layout)
        for arch in ARCHS:  # stamped as the flow stamps them: the registry reads only current evaluations
            caching.run_stage("train", train, params, layout, arch, arch=arch)
            caching.run_stage("evaluate", evaluate, params, layout, arch, arch=arch)
    data = load_prepared(layout.prepared)
    modules = {arch: load_trained(layout, arch) for arch in ARCHS}
    return State(root, params, layout, modules, preprocessing(layout, data), data.classes)


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


_SHARED: dict[str, State] = {}


def shared_state(tmp_path_factory, model_name: str) -> State:
    """One trained-and-evaluated state per test session (it takes the most time), with a model
    name of the caller's own so that test modules do not see each other's registry moves."""
    if "state" not in _SHARED:
        _SHARED["state"] = pipeline_state(tmp_path_factory.mktemp("pipeline"), "evaluate.tta=flip")
    base = _SHARED["state"]
    params = make_params(base.root, "evaluate.tta=flip", f"register.model_name={model_name}")
    return State(base.root, params, base.layout, base.modules, base.prep, base.classes)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def service(cmd: list[str], ready_url: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    """Start `cmd` (a server) in its own process group, wait until `ready_url` answers 200, stop it
    by its PID's group afterwards. Its output goes to `cwd/<name>.log`, quoted when it fails."""
    import signal
    import subprocess
    import time
    import urllib.request

    log_path = cwd / f"{Path(cmd[0]).name}-{cmd[1] if len(cmd) > 1 else ''}-{free_port()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
