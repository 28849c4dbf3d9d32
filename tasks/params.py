"""The params schema: `params.yaml` (and `-S key.path=value` overrides) parsed into typed models.

One place for every parameter. A wrong key or value is a `ParamsError` that names the key and
the allowed values, raised before any stage does work.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import ParamsError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(Section):
    source: Literal[
        "digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "folder", "archive", "idx", "csv"
    ] = "digits"
    path: str | None = Field(None, description="folder, archive, IDX folder, CSV manifest, or torchvision root")
    download: bool = Field(False, description="torchvision sources: download when `path` lacks the files")
    classes: list[str] | None = Field(
        None, description="class names in label order; a label outside them is a bad file; null: the source's own"
    )
    image_size: int = Field(32, ge=8, le=1024, description="side of the square images every split is resized to")
    channels: Literal[1, 3] | None = Field(None, description="1 or 3; null keeps the source's own")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="stratified test share, for sources without a test split")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="stratified val share carved from train")
    split_seed: int = 0
    limit_per_class: int | None = Field(None, ge=1, description="keep at most this many images per class and split")
    on_bad_file: Literal["skip", "fail"] = "skip"
    max_image_pixels: int = Field(89_478_485, ge=1, description="larger images are refused (decompression bombs)")
    workers: int = Field(0, ge=0, description="decoding processes; 0: all cores")


class ValidateParams(Section):
    min_per_class: int = Field(5, ge=1, description="every class needs this many images in every split")
    max_imbalance_ratio: float = Field(10.0, ge=1, description="largest / smallest class count within a split")
    max_duplicate_fraction: float = Field(0.05, ge=0, le=1, description="exact duplicates within a split")
    max_constant_fraction: float = Field(0.01, ge=0, le=1, description="near-constant (blank) images")
    severity: dict[str, Literal["blocking", "warning"]] = Field(
        default_factory=dict, description="per-expectation override of blocking/warning"
    )


class AugmentParams(Section):
    crop_padding: int = Field(4, ge=0, description="random crop after padding by this many pixels; 0: off")
    padding_mode: Literal["zeros", "reflect"] = "zeros"
    hflip: bool = Field(True, description="random horizontal flip")
    preview_images: int = Field(64, ge=1, le=256)


class OptimizerParams(Section):
    name: Literal["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)


class ScheduleParams(Section):
    name: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)


class TrainParams(Section):
    architectures: list[str] = Field(default_factory=lambda: ["knn", "lenet5", "resnet20"], min_length=1)
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    deterministic: bool = Field(True, description="deterministic kernels: same seed, same weights")
    model_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-architecture keyword options for models.build"
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-architecture overrides of train.* keys (a paper's own recipe)"
    )

    @field_validator("architectures")
    @classmethod
    def _known_architectures(cls, names: list[str]) -> list[str]:
        import models

        known = sorted(models.available())
        for i, name in enumerate(names):
            if name not in known:
                raise ValueError(f"unknown architecture {name!r} at position {i}; allowed: {', '.join(known)}")
        if len(set(names)) != len(names):
            raise ValueError("architectures are listed twice")
        return names

    def for_arch(self, arch: str) -> TrainParams:
        """These params with `overrides[arch]` merged in, validated again."""
        override = self.overrides.get(arch)
        if not override:
            return self
        merged = _deep_merge(self.model_dump(), override)
        try:
            return TrainParams.model_validate(merged)
        except ValidationError as exc:
            raise ParamsError(_format(exc, prefix=f"train.overrides.{arch}")) from None


class EvaluateParams(Section):
    batch_size: int = Field(256, ge=1)


class EnsembleParams(Section):
    method: Literal["soft"] = "soft"


class RegisterParams(Section):
    model_name: str = Field("digits-classifier", min_length=1)
    min_delta: float = Field(0.0, ge=0, description="val accuracy the challenger must gain over staging")


class MlflowParams(Section):
    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = "zooflow"


class OrchestrationParams(Section):
    task_runner: Literal["sequential", "threads", "dask"] = Field(
        "sequential", description="how train/evaluate fan out over architectures"
    )
    max_workers: int = Field(2, ge=1, description="threads, or Dask workers of the local cluster")
    dask_address: str | None = Field(None, description="an existing Dask scheduler; null: a LocalCluster")
    fail_fast: bool = Field(
        True, description="true: any failed architecture fails the run (after the others finish)"
    )
    cache: bool = Field(True, description="skip stages whose inputs (data, params, code) are unchanged")
    retries: int = Field(2, ge=0, description="retries of a stage on transient errors (not on user errors)")
    retry_delay_seconds: float = Field(5.0, ge=0)
    timeout_seconds: dict[str, float] = Field(
        default_factory=dict, description="per-stage time limit, e.g. {train: 3600}"
    )


class Params(Section):
    seed: int = 0
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    data: DataParams = Field(default_factory=DataParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    augment: AugmentParams = Field(default_factory=AugmentParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    ensemble: EnsembleParams = Field(default_factory=EnsembleParams)
    register: RegisterParams = Field(default_factory=RegisterParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    orchestration: OrchestrationParams = Field(default_factory=OrchestrationParams)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain data (for cache keys, MLflow params, DVC)."""
        return self.model_dump(mode="json", by_alias=True)[name]


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); the value is YAML, as in `dvc exp run -S`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ParamsError(f"override {text!r}: value {raw!r} is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise ParamsError(f"override {text!r}: {k} is not a section")
            node = node[k]
        node[keys[-1]] = value
    return out


def _format(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (missing file: all defaults), apply overrides, validate."""
    path = Path(path)
    raw: dict = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"{path}: {_format(exc)}") from None
    for arch in params.train.overrides:
        if arch not in params.train.architectures:
            raise ParamsError(f"{path}: train.overrides.{arch}: not in train.architectures")
        params.train.for_arch(arch)
    return params
