"""The lab: a claim of the lecture notes as an experiment, trained through the engine, with a verdict.

An experiment is data, `experiments/<name>.yaml` (schema: `Experiment` below): the claim, where the
notes make it, the paper's own number, the variations to train (an architecture, its options, params
overrides, a smaller or noisier training set), two sizes (`cpu`: minutes on a laptop's CPU with the
embedded digits; `gpu`: the paper-like setting), what to measure, the plot and the checks that decide.
A third size, `tiny`, is `cpu` cut to a smoke test (one epoch of two steps, two seeds, a few images).

Running one (`run_experiment`, or the `zoo-experiment` flow with the same steps as Prefect tasks):

    plan      every (variation, seed): its Params, validated before any work (`Plan`, `Run`)
    prepare   the size's dataset, ingested once into outputs/experiments/data/<key>/ (shared by every
              experiment on the same data), then each variation's derived training set (a balanced subset,
              noisy labels) under outputs/experiments/<name>/data/
    run       each run trains with `tasks.train.train` into outputs/experiments/<name>/runs/<variation>-s<seed>/
              (a project Layout of its own on the shared data), then is measured (tasks/measures.py);
              run.json keeps the measurements and the key of everything they came from, so an identical
              run is reused and a changed one is trained again
    conclude  mean ± sd per variation, every check's verdict (tasks/evidence.py), and
              outputs/experiments/<name>/{result.json, <name>.png, verdict.md}

`run_tracked` and `conclude_tracked` add MLflow: a child run per variation and seed under the
experiment's parent run (MLflow experiment `zooflow-lab`), the plot, verdict and result as artifacts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks import evidence
from tasks.errors import ParamsError, UserError
from tasks.files import read_json, write_json, write_text
from tasks.layout import Layout
from tasks.params import Params, apply_overrides, load_yaml, validate_params

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SIZES = ("cpu", "gpu", "tiny")
MLFLOW_EXPERIMENT = "zooflow-lab"

# Per-run numbers a check, a plot or a table may name (series are per epoch, or per block).
METRICS = {
    "test_error": "error on the test split, with the weights `measure.weights` names",
    "test_acc": "accuracy on the test split",
    "val_acc": "best accuracy on the val split during training",
    "train_error": "training error of the last epoch (running, with augmentation: the papers' training curves)",
    "train_loss": "training loss of the last epoch (running, with augmentation)",
    "clean_train_error": "error on the whole training split, eval mode, no augmentation",
    "gap": "clean training accuracy minus test accuracy (the generalisation gap)",
    "epochs_to_threshold": "epochs until the training error first reaches measure.threshold (a lower bound if never)",
    "params": "trainable parameters",
    "macs": "multiply-accumulates of one forward pass on one image",
    "receptive_field": "receptive field of the feature chain, in input pixels",
    "latency_ms": "CPU time of one forward pass on one image, one thread (median)",
    "latency_wall_ms": "wall time of the same (inflated by other load)",
    "grad_first": "RMS gradient at the first weight layer after the last epoch (fixed batch)",
    "grad_first_early": "RMS gradient at the first weight layer after the first epoch",
    "grad_ratio": "RMS gradient at the first weight layer / at the last, after the last epoch",
    "effective_step": "the optimiser's median per-weight step size after the last epoch",
    "effective_step_ratio": "effective step after the last epoch / after the first",
    "sharpness": "largest eigenvalue of the training loss's Hessian at the final weights",
    "deletion_error": "mean test error with one identity-shaped block deleted",
    "deletion_increase": "deletion_error minus the intact network's test error",
    "fit_ms": "fitting time of a fitted model (kNN, concept learning), ms",
    "predict_ms": "prediction time of the whole test split, ms",
    "cpu_seconds": "CPU time of the run, training and measuring",
}
SERIES = {"train_error", "train_loss", "val_acc", "grad_first", "grad_last", "effective_step", "deletion_error"}


# --------------------------------------------------------------------------- the schema


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoteRef(Spec):
    file: str = Field(description="the lecture notes' file under seeds/")
    section: str = Field(description="its section, as headed there")
    says: str = Field(description="what the notes claim, in English")


class PaperRef(Spec):
    citation: str
    where: str = Field(description="table, figure or section")
    number: str = Field(description="the paper's own result")


class Variation(Spec):
    arch: str = Field(description="architecture, as in `zooflow zoo`")
    options: dict[str, Any] = Field(default_factory=dict, description="its builder's options, at every size")
    cpu_options: dict[str, Any] = Field(
        default_factory=dict, description="merged over `options` at the cpu (and tiny) size: the laptop-scale "
                                          "reductions (narrower layers, a strided stem)")
    tiny_options: dict[str, Any] = Field(
        default_factory=dict, description="merged over both at the tiny size: what keeps a smoke test of a big "
                                          "model to seconds (a smaller bound, narrower layers); never measured")
    set: list[str] = Field(default_factory=list, description="params overrides, key.path=value")
    train_size: int | None = Field(None, ge=1, description="train on a class-balanced subset of this many images")
    label_noise: float = Field(0.0, ge=0, lt=1, description="share of training labels replaced by another class")
    weights: Literal["best", "last"] | None = Field(None, description="overrides measure.weights for this variation")
    label: str | None = Field(None, description="the name in plots and tables")
    tags: dict[str, float | int | str | bool] = Field(default_factory=dict, description="values plots group by")


class Size(Spec):
    data: dict[str, Any] = Field(default_factory=dict, description="the data section (params.yaml's keys)")
    set: list[str] = Field(default_factory=list, description="params overrides for every variation")
    seeds: int = Field(3, ge=1, le=1000, description="seeds 0 .. n-1 of every variation")


class Measure(Spec):
    weights: Literal["best", "last"] = Field("best", description="best-val weights (model.pt) or the last epoch's")
    clean_train: bool = Field(False, description="clean training error and the train/test gap")
    threshold: float | None = Field(None, gt=0, lt=1, description="epochs until the training error reaches this")
    gradients: bool = Field(False, description="RMS gradients at the first and last layer after every epoch")
    effective_step: bool = Field(False, description="the optimiser's effective step size after every epoch")
    sharpness: bool = Field(False, description="top Hessian eigenvalue of the training loss")
    sharpness_images: int = Field(512, ge=8, le=100_000)
    sharpness_iterations: int = Field(20, ge=1, le=1000)
    cost: bool = Field(False, description="parameters, MACs, CPU latency")
    latency_repeats: int = Field(30, ge=1, le=10_000)
    receptive_field: bool = Field(False, description="receptive field of a conv/pool chain (VGG)")
    block_deletion: bool = Field(False, description="test error with each identity-shaped block deleted")
    timing: bool = Field(False, description="fit and predict time (fitted models)")
    ensemble: int | None = Field(None, ge=2, le=100, description="members per ensemble: seeds are grouped by this")


class Panel(Spec):
    """One panel of the plot: curves (a series per epoch), bars (a metric per variation), lines (a metric
    against a tag), scatter (a metric against a metric), ensemble (error against members)."""

    kind: Literal["curves", "bars", "lines", "scatter", "ensemble"]
    y: str = "test_error"
    x: str | None = None
    group: str | None = None
    variations: list[str] | None = None
    title: str | None = None
    x_label: str | None = None
    y_label: str | None = None
    log_x: bool = False
    log_y: bool = False


class Ref(Spec):
    """A variation's metric, or (with `minus`) its per-seed difference from another variation's."""

    variation: str
    metric: str
    minus: str | None = None


class Check(Spec):
    says: str = Field(description="the claim this check tests, in one line")
    whose: Literal["notes", "paper", "notes and paper"] = "notes and paper"
    metric: str
    a: str | Ref
    b: str | Ref | None = None
    expect: Literal["greater", "less"]
    compare: Literal["difference", "ratio"] = "difference"
    than: float | None = Field(None, description="threshold; default 0 (difference) or 1 (ratio)")
    counts: bool = Field(True, description="counts toward the experiment's verdict")

    def ref(self, side: str) -> Ref | None:
        value = getattr(self, side)
        return Ref(variation=value, metric=self.metric) if isinstance(value, str) else value


class Correction(Spec):
    """Where the notes part from the paper they cite. `paper` is what the paper's own evidence shows (a
    fixed, cited fact); what our runs show is never written here: the page takes it from `checks`."""

    notes: str = Field(description="what the notes say, in English")
    paper: str = Field(description="what the paper shows against it, with the place")
    checks: list[int] = Field(default_factory=list, description="indices of the checks that measure it here")


class Experiment(Spec):
    title: str
    claim: str
    notes: list[NoteRef] = Field(min_length=1)
    paper: PaperRef
    variations: dict[str, Variation] = Field(min_length=1)
    sizes: dict[Literal["cpu", "gpu"], Size]
    measure: Measure = Field(default_factory=Measure)
    plot: list[Panel] = Field(min_length=1)
    table: list[str] = Field(default_factory=lambda: ["test_error"], description="metrics of the per-variation table")
    checks: list[Check] = Field(min_length=1)
    k: float = Field(2.0, gt=0, le=10, description="the rule's multiplier of the spread")
    caveat: str = Field(description="what may keep the claim from showing at the cpu size")
    corrections: list[Correction] = Field(default_factory=list, description="where the notes part from the paper they cite")

    @field_validator("sizes")
    @classmethod
    def _both_sizes(cls, sizes: dict) -> dict:
        missing = {"cpu", "gpu"} - set(sizes)
        if missing:
            raise ValueError(f"missing size(s): {', '.join(sorted(missing))}")
        return sizes

    @field_validator("variations")
    @classmethod
    def _names(cls, variations: dict) -> dict:
        for name in variations:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variation name {name!r}: letters, digits, - and _ only")
        return variations

    @model_validator(mode="after")
    def _references(self) -> Experiment:
        known = set(METRICS) | SERIES | {f"ensemble_error_{k}" for k in range(1, (self.measure.ensemble or 0) + 1)}
        for i, check in enumerate(self.checks):
            for side in ("a", "b"):
                ref = check.ref(side)
                if ref is None:
                    continue
                for vname in (ref.variation, ref.minus):
                    if vname is not None and vname not in self.variations:
                        raise ValueError(f"checks.{i}.{side}: no variation {vname!r}")
                if ref.metric not in known:
                    raise ValueError(f"checks.{i}.{side}: unknown metric {ref.metric!r}")
        for i, panel in enumerate(self.plot):
            for name in panel.variations or []:
                if name not in self.variations:
                    raise ValueError(f"plot.{i}.variations: no variation {name!r}")
            if panel.kind == "ensemble" and not self.measure.ensemble:
                raise ValueError(f"plot.{i}: an ensemble panel needs measure.ensemble")
            if panel.y not in known:
                raise ValueError(f"plot.{i}.y: unknown metric {panel.y!r}")
            if panel.kind in ("lines", "scatter") and panel.x is None:
                raise ValueError(f"plot.{i}: a {panel.kind} panel needs x")
        for metric in self.table:
            if metric not in known:
                raise ValueError(f"table: unknown metric {metric!r}")
        for i, correction in enumerate(self.corrections):
            for index in correction.checks:
                if not 0 <= index < len(self.checks):
                    raise ValueError(f"corrections.{i}.checks: no check {index} (there are {len(self.checks)})")
        return self


def names() -> list[str]:
    """Every experiment in experiments/, by file name (the folder's dvc.yaml is the lab's pipeline)."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.name != "dvc.yaml")


def load(name: str, folder: Path = EXPERIMENTS) -> Experiment:
    """experiments/<name>.yaml, validated; a bad name, YAML or key is one line naming it."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"no experiment {name!r} (no {path}); `zooflow experiment list` shows them")
    try:
        raw = load_yaml(path.read_text())
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        where = f"{where}: " if where else ""  # a model validator's error names its own place
        raise ParamsError(f"{path}: {where}{first['msg'].removeprefix('Value error, ')}"
                          + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")) from None
    except Exception as exc:  # noqa: BLE001 - YAML errors carry their own line and column
        if type(exc).__module__.startswith("yaml"):
            raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        raise


# --------------------------------------------------------------------------- the plan


@dataclass
class Run:
    variation: str
    seed: int
    arch: str
    params: Params
    spec: Variation

    @property
    def key(self) -> str:
        return f"{self.variation}-s{self.seed}"


@dataclass
class Plan:
    name: str
    size: str
    experiment: Experiment
    base: Params  # the size's data and tracking settings
    runs: list[Run]
    project: Path
    overrides: list[str] = field(default_factory=list)
    measure: Measure = field(default_factory=Measure)  # the experiment's, cut down at the tiny size

    @property
    def root(self) -> Path:
        return self.project / "outputs" / "experiments" / self.name

    def data_root(self, params: Params) -> Path:
        """The shared prepared dataset of a data section (ingested once for every experiment using it)."""
        data = json.dumps(params.section("data"), sort_keys=True)
        return self.project / "outputs" / "experiments" / "data" / hashlib.sha256(data.encode()).hexdigest()[:12]

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})


TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16", "data.limit_per_class=5",
        "validate.min_per_class=1"]


def plan(name: str, size: str = "cpu", overrides: list[str] | None = None, project: Path | None = None,
         folder: Path = EXPERIMENTS) -> Plan:
    """Every run of experiment `name` at `size`, its params validated (a bad override or option is one
    line naming the variation). `overrides` (key.path=value) apply to every variation."""
    if size not in SIZES:
        raise UserError(f"--size {size!r}: allowed: {', '.join(SIZES)}")
    exp = load(name, folder)
    chosen = exp.sizes["gpu" if size == "gpu" else "cpu"]
    extra = TINY if size == "tiny" else []
    seeds = list(range(2 if size == "tiny" else chosen.seeds))
    if size == "tiny" and exp.measure.ensemble:
        seeds = list(range(2 * exp.measure.ensemble))  # two ensembles
    where = f"{folder / name}.yaml"
    base_raw = {"data": dict(chosen.data), "mlflow": {"experiment": MLFLOW_EXPERIMENT}}
    base = validate_params(apply_overrides(base_raw, [*chosen.set, *(overrides or []), *extra]),
                           f"{where}: sizes.{'gpu' if size == 'gpu' else 'cpu'}", check_zoo=False)
    runs = []
    for vname, v in exp.variations.items():
        options = {**v.options, **(v.cpu_options if size != "gpu" else {}), **(v.tiny_options if size == "tiny" else {})}
        raw = {**base_raw, "train": {"architectures": [v.arch], "model_options": {v.arch: options}}}
        raw = apply_overrides(raw, [*chosen.set, *v.set, *(overrides or []), *extra])
        params = validate_params(raw, f"{where}: variations.{vname}")
        for seed in seeds:
            runs.append(Run(vname, seed, v.arch, params.model_copy(update={"seed": seed}), v))
    measure = exp.measure
    if size == "tiny":
        measure = measure.model_copy(update={"latency_repeats": 2, "sharpness_iterations": 2, "sharpness_images": 32})
    return Plan(name, size, exp, base, runs, Path(project or Path.cwd()).resolve(), list(overrides or []), measure)


# --------------------------------------------------------------------------- the data


def prepare(params: Params, layout: Layout, plan: Plan) -> dict:
    """Ingest the size's dataset once (reused while its inputs are unchanged), then write each
    variation's derived training set. Returns the dataset's description."""
    from tasks import caching
    from tasks.ingest import ingest
    from tasks.readers import load_prepared

    sources = {}
    for run in [None, *plan.runs]:  # the size's own data first: the dataset the page describes
        params_ = plan.base if run is None else run.params
        root = plan.data_root(params_)
        if root not in sources:
            data_layout = Layout(plan.project, data_root=root)
            if caching.cached_summary("ingest", params_, data_layout) is None:
                caching.run_stage("ingest", ingest, params_, data_layout)
            sources[root] = load_prepared(data_layout.prepared)
        if run is not None and _transformed(run.spec):
            derive(sources[root], run.spec, run.seed, derived_root(plan, run))
    data = sources[plan.data_root(plan.base)]
    source = plan.base.data
    name = source.source if source.source != "archive" else Path(source.path or "").name
    if source.limit_per_class:
        name += f" (≤ {source.limit_per_class} per class and split)"
    return {"name": name, "image_size": data.image_size, "channels": data.channels, "classes": data.num_classes,
            "counts": {s: int(data.meta["splits"][s]["count"]) for s in data.meta["splits"]},
            "data_sha256": data.data_sha256}


def _transformed(v: Variation) -> bool:
    return v.train_size is not None or v.label_noise > 0


def derived_root(plan: Plan, run: Run) -> Path:
    tag = f"n{run.spec.train_size or 'all'}-noise{run.spec.label_noise:g}-s{run.seed}"
    return plan.root / "data" / plan.data_root(run.params).name / tag


def derive(data, v: Variation, seed: int, root: Path) -> None:
    """The prepared dataset with a class-balanced subset of `train_size` training images and/or
    `label_noise` of the training labels replaced by a uniformly drawn other class (fixed by `seed`);
    val and test untouched. Written once (a dataset already there from the same base is kept)."""
    from tasks.readers import write_prepared

    prepared = root / "data" / "prepared"
    meta = prepared / "meta.json"
    if meta.exists() and read_json(meta).get("source", {}).get("base") == data.data_sha256:
        return
    rng = np.random.default_rng([seed, 1705])
    images, labels = data.split("train")
    labels = np.asarray(labels)
    keep = np.arange(len(labels))
    if v.train_size is not None and v.train_size < len(labels):
        keep = balanced_subset(labels, v.train_size, rng)
    images, labels = np.asarray(images[keep]), labels[keep].copy()
    if v.label_noise > 0:
        labels = noisy_labels(labels, v.label_noise, data.num_classes, rng)
    splits = {"train": (images, labels)}
    for name in data.meta["splits"]:
        if name != "train":
            splits[name] = tuple(np.asarray(a) for a in data.split(name))
    write_prepared(prepared, splits, data.classes, source={
        "kind": "derived", "base": data.data_sha256, "train_size": int(len(labels)), "label_noise": v.label_noise,
        "seed": seed})


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n training images, as even across classes as the classes allow, drawn by `rng`;
    in their original order."""
    order = rng.permutation(len(labels))
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    chosen = order[np.argsort(rank[order], kind="stable")[:n]]
    return np.sort(chosen)


def noisy_labels(labels: np.ndarray, rate: float, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Symmetric label noise: each label, with probability `rate`, becomes one of the other classes."""
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, classes, len(labels))
    return np.where(flip, (labels + shift) % classes, labels).astype(np.int64)


# --------------------------------------------------------------------------- one run


def run_layout(plan: Plan, run: Run) -> Layout:
    return Layout(plan.root / "runs" / run.key,
                  data_root=derived_root(plan, run) if _transformed(run.spec) else plan.data_root(run.params))


def run_key(plan: Plan, run: Run, layout: Layout) -> str:
    """Everything a run's measurements come from: the train stage's inputs (data, recipe, engine and
    zoo code), the variation and what is measured (with the measuring code)."""
    from tasks import caching

    blob = json.dumps({"train": caching.cache_key("train", run.params, layout, run.arch),
                       "variation": run.spec.model_dump(mode="json"),
                       "measure": plan.measure.model_dump(mode="json"),
                       "code": caching.code_digest(("tasks/measures.py", "tasks/experiment.py"))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def run_one(params: Params, layout: Layout, plan: Plan, run: Run, run_id: str | None = None,
            log=None) -> dict:
    """Train and measure one (variation, seed); an identical earlier run is reused from its run.json.
    Returns the run's record (its measurements, whether it was reused)."""
    from tasks.train import train

    out = run_layout(plan, run)
    key = run_key(plan, run, out)
    record_path = out.root / "run.json"
    if record_path.exists():
        record = read_json(record_path)
        if record.get("key") == key:
            return {**record, "reused": True}
        shutil.rmtree(out.root)  # made from other inputs: nothing of it may be mixed into this run
    cpu0, wall0 = time.process_time(), time.perf_counter()
    from tasks import engine

    engine.seed_everything(run.seed)
    probe = _probe(plan, run, out)
    diverged = None
    try:
        summary = train(run.params, out, run.arch, run_id=run_id, log=log, probe=probe, curves=False)
    except engine.TrainingDiverged as exc:  # an outcome of the recipe, reported as such: never a number
        diverged, metrics, series = str(exc), {}, {}
    else:
        history = read_json(out.train(run.arch) / "history.json")
        metrics, series = measure(plan, run, out, summary, history)
    metrics["cpu_seconds"] = time.process_time() - cpu0
    record = {"key": key, "variation": run.variation, "seed": run.seed, "arch": run.arch, "diverged": diverged,
              "metrics": metrics, "series": series, "wall_seconds": time.perf_counter() - wall0}
    write_json(record_path, record)
    return {**record, "reused": False}


def _probe(plan: Plan, run: Run, layout: Layout):
    m = plan.measure
    if not (m.gradients or m.effective_step):
        return None
    import torch

    from tasks import augment as aug
    from tasks import measures
    from tasks.readers import load_prepared, load_stats

    batch = None
    if m.gradients:
        images, labels = load_prepared(layout.prepared).split("train")
        n = min(256, len(labels))
        stats = load_stats(layout)
        batch = (aug.normalize(aug.to_nchw(np.asarray(images[:n])), stats.mean, stats.std),
                 torch.as_tensor(np.asarray(labels[:n]), dtype=torch.int64))
    return measures.probe(batch, m.gradients, m.effective_step)


def measure(plan: Plan, run: Run, layout: Layout, summary: dict, history: list[dict]
            ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The run's numbers (METRICS) and per-epoch / per-block series (SERIES) after training."""
    import torch

    import models
    from tasks import augment as aug
    from tasks import measures
    from tasks.readers import build_model, load_prepared, load_stats, load_trained, read_weights

    m = plan.measure
    data = load_prepared(layout.prepared)
    stats = load_stats(layout)
    out = layout.train(run.arch)
    model = load_trained(layout, run.arch)
    if (run.spec.weights or m.weights) == "last" and (out / "checkpoint.pt").exists():
        last = build_model(run.arch, read_json(out / "train.json")["model"])
        last.load_state_dict(read_weights(out / "checkpoint.pt", f"delete {layout.root}")["model"])
        model = last.eval()
    test_x, test_y = data.split("test")
    t0 = time.perf_counter()
    logits = measures.predict(model, test_x, stats)
    predict_seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {"test_error": measures.error(logits, test_y)}
    metrics["test_acc"] = 1 - metrics["test_error"]
    metrics["val_acc"] = summary["best_val_acc"]
    series: dict[str, list[float]] = {}
    sgd = [h for h in history if h.get("train_acc") is not None]
    if sgd:
        series["train_error"] = [1 - h["train_acc"] for h in sgd]
        series["train_loss"] = [h["train_loss"] for h in sgd]
        series["val_acc"] = [h["val_acc"] for h in sgd]
        metrics["train_error"], metrics["train_loss"] = series["train_error"][-1], series["train_loss"][-1]
    if m.ensemble:
        np.save(layout.root / "test_probs.npy", measures.softmax(logits))
    if m.clean_train:
        train_x, train_y = data.split("train")
        metrics["clean_train_error"] = measures.error(measures.predict(model, train_x, stats), train_y)
        metrics["gap"] = (1 - metrics["clean_train_error"]) - metrics["test_acc"]
    if m.threshold is not None and sgd:
        value, reached = measures.epochs_to(series["train_error"], m.threshold, 1 - 1 / data.num_classes)
        metrics["epochs_to_threshold"] = value
        metrics["threshold_reached"] = float(reached)
    if m.gradients and sgd:
        series["grad_first"] = [h["grad_first"] for h in sgd]
        series["grad_last"] = [h["grad_last"] for h in sgd]
        metrics["grad_first"], metrics["grad_first_early"] = series["grad_first"][-1], series["grad_first"][0]
        metrics["grad_ratio"] = series["grad_first"][-1] / max(series["grad_last"][-1], 1e-30)
    if m.effective_step and sgd:
        series["effective_step"] = [h["effective_step"] for h in sgd]
        metrics["effective_step"] = series["effective_step"][-1]
        metrics["effective_step_ratio"] = series["effective_step"][-1] / max(series["effective_step"][0], 1e-30)
    if m.sharpness:
        train_x, train_y = data.split("train")
        n = min(m.sharpness_images, len(train_y))
        x = aug.normalize(aug.to_nchw(np.asarray(train_x[:n])), stats.mean, stats.std)
        y = torch.as_tensor(np.asarray(train_y[:n]), dtype=torch.int64)
        metrics["sharpness"] = measures.sharpness(model, x, y, m.sharpness_iterations, seed=run.seed)
    if m.cost:
        metrics["params"] = models.count_params(model)
        metrics["macs"] = measures.macs(model, data.channels, data.image_size)
        metrics.update(measures.latency(model, data.channels, data.image_size, m.latency_repeats))
    if m.receptive_field:
        metrics["receptive_field"] = measures.receptive_field(model)
    if m.block_deletion:
        errors = measures.block_deletion(model, test_x, test_y, stats)
        series["deletion_error"] = errors
        metrics["deletion_error"] = float(np.mean(errors)) if errors else float("nan")
        metrics["deletion_increase"] = metrics["deletion_error"] - metrics["test_error"]
    if m.timing:
        metrics["fit_ms"] = 1000 * summary["train_seconds"]
        metrics["predict_ms"] = 1000 * predict_seconds
    return metrics, series


# --------------------------------------------------------------------------- the conclusion


def conclude(params: Params, layout: Layout, plan: Plan, records: list[dict], dataset: dict,
             seconds: dict[str, float]) -> dict:
    """Aggregate the runs, decide every check, write result.json, the plot and verdict.md."""
    exp = plan.experiment
    variations = {}
    for vname, v in exp.variations.items():
        mine = sorted((r for r in records if r["variation"] == vname), key=lambda r: r["seed"])
        names_ = sorted({k for r in mine for k in r["metrics"]})
        metrics = {k: evidence.summary([r["metrics"].get(k) for r in mine]) for k in names_}
        series = {k: evidence.series_summary([r["series"][k] for r in mine if k in r["series"]])
                  for k in sorted({k for r in mine for k in r["series"]})}
        if exp.measure.ensemble:
            metrics.update(_ensembles(plan, vname, mine, exp.measure.ensemble))
        variations[vname] = {"arch": v.arch, "options": _run_options(plan, vname), "set": v.set,
                             "diverged": [r["seed"] for r in mine if r.get("diverged")],
                             "train_size": v.train_size,
                             "label_noise": v.label_noise, "label": v.label or vname, "tags": v.tags,
                             "metrics": metrics, "series": series}
    checks = [_decide(check, variations, exp.k) for check in exp.checks]
    result = {
        "name": plan.name, "title": exp.title, "claim": exp.claim,
        "notes": [n.model_dump() for n in exp.notes], "paper": exp.paper.model_dump(),
        "size": plan.size, "overrides": plan.overrides, "dataset": dataset, "seeds": plan.seeds(),
        "variations": variations, "checks": checks, "verdict": evidence.overall(checks),
        "table_metrics": exp.table, "caveat": exp.caveat,
        "corrections": [c.model_dump() for c in exp.corrections],
        "runs": len(records), "reused_runs": sum(bool(r.get("reused")) for r in records),
        "cpu_seconds": seconds["cpu"], "wall_seconds": seconds["wall"],
        "plot": f"{plan.name}.png",
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    evidence.plot(result, [p.model_dump() for p in exp.plot], plan.root / result["plot"])
    write_text(plan.root / "verdict.md", evidence.verdict_markdown(result, image=result["plot"]))
    write_json(plan.root / "result.json", result)
    return result


def _run_options(plan: Plan, vname: str) -> dict:
    run = next(r for r in plan.runs if r.variation == vname)
    return run.params.train.model_options.get(run.arch, {})


def _ensembles(plan: Plan, vname: str, records: list[dict], members: int) -> dict[str, dict]:
    """ensemble_error_k per group of `members` consecutive seeds (the groups are the replicates)."""
    from tasks import measures
    from tasks.readers import load_prepared

    labels = None
    per_k: dict[int, list[float]] = {}
    seeds = [r["seed"] for r in records]
    groups = [seeds[i:i + members] for i in range(0, len(seeds) - members + 1, members)] or [seeds]
    for group in groups:
        probs = []
        for seed in group:
            run = next(r for r in plan.runs if r.variation == vname and r.seed == seed)
            layout = run_layout(plan, run)
            probs.append(np.load(layout.root / "test_probs.npy"))
            if labels is None:
                labels = load_prepared(layout.prepared).split("test")[1]
        for k, err in enumerate(measures.ensemble_errors(probs, labels), start=1):
            per_k.setdefault(k, []).append(err)
    return {f"ensemble_error_{k}": evidence.summary(v) for k, v in per_k.items()}


def _decide(check: Check, variations: dict, k: float) -> dict:
    a, b = check.ref("a"), check.ref("b")
    a_stat = _values(variations, a)
    b_stat = _values(variations, b) if b else None
    effect, spread = evidence.effect_of(a_stat["values"], b_stat["values"] if b_stat else None, check.compare)
    than = check.than if check.than is not None else (1.0 if check.compare == "ratio" else 0.0)
    return {"says": check.says, "whose": check.whose, "metric": check.metric, "compare": check.compare,
            "expect": check.expect, "than": than, "k": k, "counts": check.counts,
            "a": a.model_dump(), "a_label": _label(variations, a, check.metric), "a_stat": a_stat,
            "b": b.model_dump() if b else None, "b_label": _label(variations, b, check.metric) if b else None,
            "b_stat": b_stat, "effect": effect, "spread": spread,
            "verdict": evidence.decide(effect, spread, check.expect, than, k)}


def _values(variations: dict, ref: Ref) -> dict:
    """The summary of a reference: a variation's metric, or its per-seed difference from another's."""
    stat = variations[ref.variation]["metrics"].get(ref.metric, evidence.summary([]))
    if ref.minus is None:
        return stat
    other = variations[ref.minus]["metrics"].get(ref.metric, evidence.summary([]))
    return evidence.summary([x - y for x, y in zip(stat["values"], other["values"])])


def _label(variations: dict, ref: Ref, metric: str) -> str:
    label = variations[ref.variation]["label"]
    if ref.minus is not None:
        label = f"{label} − {variations[ref.minus]['label']}"
    return label if ref.metric == metric else f"{label} ({ref.metric})"


# --------------------------------------------------------------------------- the whole experiment


def run_experiment(name: str, size: str = "cpu", overrides: list[str] | None = None, project: Path | None = None,
                   folder: Path = EXPERIMENTS) -> dict:
    """plan -> prepare -> run every (variation, seed) -> conclude, untracked (tests, benches; the
    `zoo-experiment` flow runs the same steps as Prefect tasks, tracked in MLflow)."""
    the_plan = plan(name, size, overrides, project, folder)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    layout = Layout(the_plan.project)
    dataset = prepare(the_plan.base, layout, the_plan)
    records = [run_one(r.params, layout, the_plan, r) for r in the_plan.runs]
    seconds = {"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0}
    return conclude(the_plan.base, layout, the_plan, records, dataset, seconds)


# --------------------------------------------------------------------------- MLflow


def run_tracked(params: Params, layout: Layout, plan: Plan, run: Run, parent_run_id: str) -> dict:
    """run_one with MLflow: a child run `<variation>-s<seed>` of the experiment's run; its recipe as
    params, per-epoch metrics while it trains, its measurements after. A reused run is logged from its
    record (tag zooflow.reused)."""
    from tasks import tracking

    run_id = tracking.start_run(run.params, run.key, parent_run_id, tags={
        "zooflow.experiment": plan.name, "zooflow.variation": run.variation, "zooflow.seed": str(run.seed),
        "zooflow.arch": run.arch, "zooflow.size": plan.size})
    with tracking.ending(run.params, run_id):
        tp = run.params.train.for_arch(run.arch)
        tracking.log_params(run.params, run_id, {
            "arch": run.arch, "seed": run.seed, "variation": run.variation,
            "model_options": tp.model_options.get(run.arch, {}), "train_size": run.spec.train_size,
            "label_noise": run.spec.label_noise,
            "train": tp.model_dump(mode="json", exclude={"architectures", "overrides", "model_options"}),
            "augment": run.params.augment.model_dump(mode="json")})
        record = run_one(params, layout, plan, run, run_id=run_id, log=tracking.metric_logger(run.params, run_id))
        if record.get("diverged"):
            tracking.client(run.params).set_tag(run_id, "zooflow.diverged", record["diverged"])
        if record["reused"]:
            tracking.client(run.params).set_tag(run_id, "zooflow.reused", "true")
            for epoch, values in enumerate(zip(*record["series"].values()) if record["series"] else []):
                tracking.log_metrics(run.params, run_id, dict(zip(record["series"], values)), step=epoch)
        tracking.log_metrics(run.params, run_id, record["metrics"])
        out = run_layout(plan, run)
        for name in ("history.json", "train.json"):
            path = out.train(run.arch) / name
            if path.exists():
                tracking.log_artifact(run.params, run_id, path, "train")
    return record


def conclude_tracked(params: Params, layout: Layout, plan: Plan, records: list[dict], dataset: dict,
                     seconds: dict[str, float], parent_run_id: str) -> dict:
    """conclude, then the verdict on the experiment's MLflow run: tags, the effects as metrics, the plot,
    verdict.md and result.json as artifacts."""
    from tasks import tracking

    result = conclude(params, layout, plan, records, dataset, seconds)
    c = tracking.client(plan.base)
    c.set_tag(parent_run_id, "zooflow.verdict", result["verdict"])
    for i, check in enumerate(result["checks"]):
        c.set_tag(parent_run_id, f"zooflow.check.{i}", f"{check['verdict']}: {check['says']}"[:5000])
    tracking.log_metrics(plan.base, parent_run_id, {
        f"check_{i}_effect": ch["effect"] for i, ch in enumerate(result["checks"]) if ch["effect"] is not None})
    tracking.log_metrics(plan.base, parent_run_id, {"cpu_seconds": seconds["cpu"], "wall_seconds": seconds["wall"]})
    for name in (result["plot"], "verdict.md", "result.json"):
        tracking.log_artifact(plan.base, parent_run_id, plan.root / name, "experiment")
    return result


def start_tracked(plan: Plan) -> str:
    """The experiment's MLflow run (the parent of its runs)."""
    from tasks import tracking

    return tracking.start_run(plan.base, f"experiment-{plan.name}", tags={
        "zooflow.experiment": plan.name, "zooflow.size": plan.size,
        "zooflow.overrides": " ".join(plan.overrides) or "-"})


def describe(name: str, project: Path | None = None) -> dict:
    """One line of `zooflow experiment list`: the claim, its runs at the cpu size, the last verdict."""
    exp = load(name)
    result = last_result(name, project)
    return {"name": name, "title": exp.title, "variations": len(exp.variations), "seeds": exp.sizes["cpu"].seeds,
            "verdict": result["verdict"] if result else None, "size": result["size"] if result else None}


def last_result(name: str, project: Path | None = None) -> dict | None:
    """outputs/experiments/<name>/result.json of this project, if the experiment has been run."""
    path = Path(project or Path.cwd()) / "outputs" / "experiments" / name / "result.json"
    return read_json(path) if path.exists() else None


def report(project: Path | None = None, out: Path | None = None) -> dict:
    """docs/experiments.md from every outputs/experiments/*/result.json, the plots copied beside it
    (docs/experiments/<name>.png). Returns what was written."""
    project = Path(project or Path.cwd())
    out = Path(out or project / "docs" / "experiments.md")
    results, missing, images = [], [], {}
    for name in names():
        result = last_result(name, project)
        if result is None:
            missing.append(name)
            continue
        results.append(result)
        plot = project / "outputs" / "experiments" / name / result["plot"]
        if plot.exists():
            target = out.parent / "experiments" / plot.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plot, target)
            images[name] = f"experiments/{plot.name}"
    write_text(out, evidence.page(results, missing, images))
    return {"page": str(out), "experiments": [r["name"] for r in results], "missing": missing}
