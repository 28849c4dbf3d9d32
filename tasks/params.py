"""The params schema: `params.yaml` (and `-S key.path=value` overrides) parsed into typed models.

One place for every parameter. A wrong key or value is a `ParamsError` that names the key and
the allowed values, raised before any stage does work.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from tasks.errors import ParamsError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN and inf are never a setting


class DataParams(Section):
    source: Literal[
        "digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "folder", "archive", "idx", "csv"
    ] = Field("digits", description="where the images come from; digits: the embedded default")
    path: str | None = Field(None, description="folder, archive, IDX folder, CSV manifest, or torchvision root")
    download: bool = Field(False, description="torchvision sources: download when `path` lacks the files")
    classes: list[str] | None = Field(
        None, description="class names in label order; a label outside them is a bad file; null: the source's own"
    )
    image_size: int = Field(32, ge=8, le=1024, description="side of the square images every split is resized to")
    channels: Literal[1, 3] | None = Field(None, description="1 or 3; null keeps the source's own")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="stratified test share, for sources without a test split")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="stratified val share carved from train")
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the stratified val/test draws")
    limit_per_class: int | None = Field(None, ge=1, le=10**9, description="keep at most this many images per class and split")
    on_bad_file: Literal["skip", "fail"] = Field(
        "skip", description="a bad file: skip it (listed in the manifest) or fail the run"
    )
    max_image_pixels: int = Field(89_478_485, ge=1, le=2**40, description="larger images are refused (decompression bombs)")
    workers: int = Field(0, ge=0, le=256, description="decoding processes; 0: all cores")
    on_empty_class: Literal["fail", "drop"] = Field(
        "fail", description="a class with no usable images: stop (fail), or train without it (drop, listed in the manifest)"
    )

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str] | None) -> list[str] | None:
        if classes is None:
            return None
        if not classes or any(not str(c).strip() for c in classes):
            raise ValueError("class names must be non-empty")
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            raise ValueError(f"class names listed twice: {', '.join(map(repr, twice))}")
        return classes


VALIDATION_CHECKS: dict[str, tuple[str, str]] = {  # name -> (default severity, what it guards)
    "labels_in_class_set": ("blocking", "every label names a class"),
    "shapes_and_dtypes": ("blocking", "uint8 NHWC images of data.image_size, int64 labels"),
    "min_per_class": ("blocking", "every class in every split has validate.min_per_class images"),
    "imbalance_ratio": ("warning", "largest / smallest class within a split is under validate.max_imbalance_ratio"),
    "no_test_leakage": ("blocking", "no exact-duplicate image shared between train/val and test"),
    "no_train_val_overlap": ("warning", "no exact-duplicate image shared between train and val"),
    "duplicates_within_split": ("blocking", "exact duplicates within a split under validate.max_duplicate_fraction"),
    "near_constant_images": ("warning", "near-constant (blank) images under validate.max_constant_fraction"),
}


class ValidateParams(Section):
    min_per_class: int = Field(5, ge=1, le=10**9, description="every class needs this many images in every split")
    max_imbalance_ratio: float = Field(10.0, ge=1, le=10**9, description="largest / smallest class count within a split")
    max_duplicate_fraction: float = Field(0.05, ge=0, le=1, description="exact duplicates within a split")
    max_constant_fraction: float = Field(0.01, ge=0, le=1, description="near-constant (blank) images")
    constant_std: float = Field(2.0, ge=0, le=255, description="an image whose pixel std is below this is near-constant")
    severity: dict[str, Literal["blocking", "warning"]] = Field(
        default_factory=dict, description="per-check override of blocking/warning; checks: " + ", ".join(VALIDATION_CHECKS)
    )

    @field_validator("severity")
    @classmethod
    def _known_checks(cls, severity: dict[str, str]) -> dict[str, str]:
        for name in severity:
            if name not in VALIDATION_CHECKS:
                raise ValueError(f"unknown check {name!r}; allowed: {', '.join(VALIDATION_CHECKS)}")
        return severity


class AugmentParams(Section):
    """The training-time augmentation policy, applied batched on the training device (tasks/augment.py).

    Order: policy (uint8) -> resized crop / scale jitter -> padded crop -> flip -> colour jitter -> PCA
    lighting -> normalise -> cutout / random erasing -> mixup / cutmix."""

    crop_padding: int = Field(4, ge=0, le=256, description="random crop after padding by this many pixels; 0: off")
    padding_mode: Literal["zeros", "reflect"] = Field("zeros", description="how the crop pads: black or mirrored")
    hflip: bool = Field(True, description="random horizontal flip, p=0.5")
    brightness: float = Field(0.0, ge=0, le=10, description="colour jitter: brightness factor in [1-b, 1+b]; 0: off")
    contrast: float = Field(0.0, ge=0, le=10, description="colour jitter: contrast factor in [1-c, 1+c]; 0: off")
    saturation: float = Field(0.0, ge=0, le=10, description="colour jitter: saturation factor in [1-s, 1+s]; 0: off")
    hue: float = Field(0.0, ge=0, le=0.5, description="colour jitter: hue rotation in [-h, h] turns; 0: off")
    pca_lighting: float = Field(0.0, ge=0, le=10, description="AlexNet's PCA lighting noise: std of the eigen-weights (0.1 in the paper); 0: off")
    scale_jitter: tuple[float, float] | None = Field(
        None, description="VGG scale jittering: rescale to side S in [min, max] x image_size, then crop image_size; null: off"
    )
    random_resized_crop: tuple[float, float] | None = Field(
        None, description="Inception-style random resized crop: area fraction range, e.g. [0.35, 1]; null: off"
    )
    rrc_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="aspect-ratio range of the random resized crop")
    cutout: int = Field(0, ge=0, le=4096, description="cutout: side in pixels of a square zeroed at a random centre; 0: off")
    random_erasing: float = Field(0.0, ge=0, le=1, description="random erasing probability (Zhong et al.); 0: off")
    erasing_scale: tuple[float, float] = Field((0.02, 0.33), description="erased area fraction range")
    erasing_ratio: tuple[float, float] = Field((0.3, 3.3), description="erased rectangle aspect-ratio range")
    mixup_alpha: float = Field(0.0, ge=0, le=1000, description="mixup Beta(alpha, alpha); 0: off")
    cutmix_alpha: float = Field(0.0, ge=0, le=1000, description="cutmix Beta(alpha, alpha); 0: off (both on: one per batch, 50/50)")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability that a batch is mixed when mixup/cutmix is on")
    policy: Literal["none", "autoaugment", "randaugment", "trivialaugment"] = Field(
        "none", description="policy augmentation from torchvision.transforms.v2, applied per sample"
    )
    autoaugment_policy: Literal["cifar10", "imagenet", "svhn"] = Field("cifar10", description="AutoAugment: which learned policy")
    randaugment_ops: int = Field(2, ge=1, le=100, description="RandAugment: ops per image (N)")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment: magnitude (M)")
    preview_images: int = Field(64, ge=1, le=256, description="augmented train images in data/augment/preview.png")

    @field_validator("scale_jitter", "random_resized_crop", "rrc_ratio", "erasing_scale", "erasing_ratio")
    @classmethod
    def _ranges(cls, pair: tuple[float, float] | None, info) -> tuple[float, float] | None:
        if pair is None:
            return None
        lo, hi = pair
        top = {"random_resized_crop": 1.0, "erasing_scale": 1.0}.get(info.field_name, 100.0)
        if not 0 < lo <= hi <= top:
            raise ValueError(f"expected [low, high] with 0 < low <= high <= {top:g} (got [{lo:g}, {hi:g}])")
        return pair


class OptimizerParams(Section):
    name: Literal["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"] = Field("sgd", description="the optimiser")
    lr: float = Field(0.05, gt=0, le=1000, description="peak learning rate (after warm-up, before decay)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, le=10, description="L2 weight decay (decoupled for adamw)")
    exclude_bn_bias_decay: bool = Field(False, description="no weight decay on normalisation weights and biases")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="adam/adamw betas")
    eps: float = Field(1e-8, gt=0, le=1, description="adam/adamw/rmsprop/adagrad/adadelta epsilon")
    alpha: float = Field(0.99, gt=0, lt=1, description="rmsprop smoothing constant")
    rho: float = Field(0.9, gt=0, lt=1, description="adadelta decay of the squared-gradient average")
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="auto: fused on CUDA where torch offers it, else torch's default"
    )


class ScheduleParams(Section):
    name: Literal["constant", "cosine", "step", "exponential", "plateau", "onecycle"] = Field(
        "cosine", description="learning-rate schedule, set every step"
    )
    warmup_epochs: float = Field(0, ge=0, le=100_000, description="linear warm-up from warmup_start_factor x lr, per step")
    warmup_start_factor: float = Field(0.1, gt=0, le=1, description="warm-up starts at this fraction of lr")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a fraction of lr")
    milestones: list[Annotated[int, Field(ge=0, le=100_000)]] = Field(
        default_factory=list, description="step: epochs at which lr is multiplied by step_gamma; empty: 50% and 75% of the run"
    )
    step_gamma: float = Field(0.1, gt=0, le=1, description="step: the factor at each milestone (divide by 10)")
    exp_gamma: float = Field(0.96, gt=0, le=1, description="exponential: factor every exp_every epochs (GoogLeNet: 0.96 / 8)")
    exp_every: int = Field(8, ge=1, le=100_000, description="exponential: epochs between two exp_gamma steps")
    plateau_factor: float = Field(0.1, gt=0, lt=1, description="plateau: lr factor when val accuracy stops improving")
    plateau_patience: int = Field(2, ge=0, le=100_000, description="plateau: epochs without improvement before the cut")
    plateau_threshold: float = Field(1e-3, ge=0, le=1, description="plateau: smallest val-accuracy gain that counts")
    onecycle_pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: fraction of steps spent rising")
    onecycle_div: float = Field(25.0, ge=1, le=1e6, description="onecycle: start lr = lr / div")
    onecycle_final_div: float = Field(1e4, ge=1, le=1e9, description="onecycle: final lr = lr / (div * final_div)")
    onecycle_momentum: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] | None = Field(
        (0.85, 0.95),
        description="onecycle: momentum (SGD, RMSprop) or Adam's beta1 cycled inversely to lr, from max to base and back; null: left alone",
    )


class FinetuneParams(Section):
    """How a run that starts from weights (`train.init`) treats them (tasks/optim.py Freeze, param_groups)."""

    freeze_epochs: int = Field(
        0, ge=0, le=100_000,
        description="train only the final classifier for the first N epochs (a linear probe: the rest gets no "
                    "gradient, its BatchNorm keeps its running statistics), then the whole network; 0: off")
    backbone_lr_mult: float = Field(
        1.0, gt=0, le=100,
        description="learning rate of everything but the final classifier: train.optimizer.lr x this (0.1: a "
                    "backbone that moves ten times slower than the new head)")
    new_head: bool = Field(
        False, description="true: always start with a fresh final classifier; false: only when the classes differ "
                           "from the source's (their number, or their names where the source names them)")


class TrainParams(Section):
    # How a run executes, not what it computes: outside the cache key and the resume fingerprint.
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"resume", "progress", "num_threads", "data_placement"})

    architectures: list[str] = Field(
        default_factory=lambda: ["knn", "lenet5", "resnet20"],
        min_length=1,
        description="the zoo to train, by name (`zooflow zoo` lists them)",
    )
    init: str = Field(
        "scratch",
        description="where training starts: scratch (the architecture's own initialisation); models:/NAME@ALIAS "
                    "or models:/NAME/VERSION (a registered version's weights for this architecture); a weights "
                    "file (a state dict); or torchvision's pretrained weights by name (IMAGENET1K_V1), for the "
                    "architectures that are torchvision's",
    )
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    epochs: int = Field(15, ge=1, le=100_000, description="passes over the train split")
    batch_size: int = Field(128, ge=1, le=1 << 20, description="images per step (the ragged last batch of an epoch is dropped)")
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy targets (also of mixed ones)")
    deterministic: bool = Field(True, description="deterministic kernels: same seed, same weights")
    grad_clip: float = Field(0.0, ge=0, le=1e9, description="clip the gradients' global L2 norm to this; 0: off")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="model EMA decay (e.g. 0.999), selected on val when on; 0: off")
    early_stopping: int = Field(0, ge=0, le=100_000, description="stop after this many epochs without a better val accuracy; 0: off")
    max_steps_per_epoch: int | None = Field(None, ge=1, le=10**9, description="cap on the steps of an epoch (smoke runs)")
    amp: Literal["auto", "bf16", "off"] = Field("auto", description="autocast: auto is bf16 on CUDA, off elsewhere")
    channels_last: bool = Field(True, description="channels_last (NHWC) memory format for the model and batches, on CUDA and CPU")
    cudnn_benchmark: bool = Field(True, description="cudnn autotuning on CUDA (off when deterministic)")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager when it fails)")
    data_placement: Literal["auto", "device", "ram", "mmap"] = Field(
        "auto", description="where the uint8 train split lives: auto = the device when it fits, else RAM, else memory-mapped"
    )
    num_threads: int = Field(0, ge=0, le=1024, description="CPU threads for torch; 0: torch's default (all cores)")
    resume: bool = Field(True, description="continue from outputs/train/<arch>/checkpoint.pt when its params match")
    progress: Literal["auto", "bar", "log", "off"] = Field(
        "auto", description="auto: a tqdm bar on a terminal, one log line per epoch otherwise"
    )
    model_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-architecture keyword options for models.build"
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-architecture overrides of train.* keys (a paper's own recipe)"
    )

    @field_validator("architectures")
    @classmethod
    def _known_architectures(cls, names: list[str], info: ValidationInfo) -> list[str]:
        if (info.context or {}).get("check_zoo", True):
            import models  # the zoo imports torch: skipped where only `data` is read (load_params(check_zoo=False))

            known = sorted(models.available())
            for i, name in enumerate(names):
                if name not in known:
                    raise ValueError(f"unknown architecture {name!r} at position {i}; allowed: {', '.join(known)}")
        if len(set(names)) != len(names):
            raise ValueError("architectures are listed twice")
        return names

    @field_validator("init")
    @classmethod
    def _init_source(cls, init: str) -> str:
        from tasks.init_weights import source_kind

        source_kind(init)  # raises ValueError naming the forms it takes
        return init

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
    batch_size: int = Field(256, ge=1, le=1 << 16, description="inference batch size")
    tta: Literal["none", "flip", "multicrop"] = Field(
        "none", description="test-time augmentation reported beside the plain metrics: mirror, or 10-view crops"
    )
    ece_bins: int = Field(15, ge=1, le=100, description="confidence bins of the expected calibration error")
    measure_speed: bool = Field(True, description="measure latency (batch 1) and throughput")
    latency_repeats: int = Field(20, ge=1, le=10_000, description="timed batch-1 forward passes (the median is reported)")
    throughput_batch: int = Field(256, ge=1, le=1 << 14, description="batch size of the throughput measurement")


class ExplainParams(Section):
    """What each trained model sees (tasks/explain.py): filters, feature maps, Grad-CAM or attention
    rollout, occlusion sensitivity, the effective receptive field, the most confident mistakes."""

    # What the flow does with the pictures, not what they are: outside the stage's cache key.
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"top_models"})

    enabled: bool = Field(True, description="explain every model after its evaluation; false: skip the stage")
    split: Literal["val", "test"] = Field(
        "val", description="the split the explained images and the gallery of mistakes come from"
    )
    images_per_class: int = Field(
        2, ge=1, le=100, description="images per class explained (Grad-CAM or rollout, occlusion): a fixed, class-balanced draw"
    )
    max_classes: int = Field(
        10, ge=1, le=1000, description="classes shown in the panels; with more, evenly spaced over the class list"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the draw of images: same seed, same pictures")
    occlusion_window: int | None = Field(
        None, ge=1, le=4096, description="side in pixels of the square slid over the image (filled with the mean colour); null: a quarter of the image"
    )
    occlusion_stride: int | None = Field(
        None, ge=1, le=4096, description="step of the occluding square in pixels; null: half the window"
    )
    gradcam_min_size: int = Field(
        4, ge=1, le=1024, description="Grad-CAM reads the last feature map with at least this many pixels a side (a 1x1 map shows no place)"
    )
    filters: int = Field(64, ge=1, le=1024, description="first-layer filters shown at most")
    feature_layers: int = Field(4, ge=1, le=32, description="layers in the feature-map picture: stage ends, evenly spaced")
    feature_channels: int = Field(8, ge=1, le=64, description="channels per layer in the feature-map picture: the most active")
    mistakes_per_class: int = Field(4, ge=1, le=100, description="most confident mistakes shown per true class")
    confused_pairs: int = Field(10, ge=1, le=1000, description="most confused (true, predicted) class pairs listed")
    top_models: int = Field(
        3, ge=0, le=100, description="the leaderboard's best single models whose pictures the Prefect artifact `explanations` shows"
    )


class EnsembleParams(Section):
    method: Literal["auto", "soft", "hard", "weighted", "greedy"] = Field(
        "auto", description="the ensemble written out; auto: the best of all methods on val"
    )
    members: list[str] | None = Field(None, description="architectures to combine; null: every evaluated one")
    greedy_rounds: int = Field(25, ge=1, le=10_000, description="additions in greedy forward selection (with replacement)")


class RegisterParams(Section):
    model_name: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="the registered model in the MLflow registry; null: named after the data, "
                    "`<source or folder name>-classifier` (digits-classifier, cifar10-classifier, pets-classifier)",
    )
    min_delta: float = Field(0.0, ge=0, le=1, description="val accuracy the challenger must gain over staging")
    candidates: Literal["all", "single", "ensemble"] = Field(
        "all", description="what may be registered: the best single model, the ensemble, or the best of both"
    )


class MlflowParams(Section):
    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = Field("zooflow", description="MLflow experiment of the runs")
    http_retries: int = Field(3, ge=0, le=20, description="retries of a transient HTTP error (server mode)")
    http_timeout: int = Field(30, ge=1, le=3600, description="seconds before an HTTP request to the server fails")


class OrchestrationParams(Section):
    task_runner: Literal["sequential", "threads", "dask"] = Field(
        "sequential", description="how train/evaluate fan out over architectures"
    )
    max_workers: int = Field(2, ge=1, le=256, description="threads, or Dask workers of the local cluster")
    dask_address: str | None = Field(None, description="an existing Dask scheduler; null: a LocalCluster")
    fail_fast: bool = Field(
        True, description="true: any failed architecture fails the run (after the others finish)"
    )
    cache: bool = Field(True, description="skip stages whose inputs (data, params, code) are unchanged")
    retries: int = Field(2, ge=0, le=20, description="retries of a stage on transient errors (not on user errors)")
    retry_delay_seconds: float = Field(5.0, ge=0, le=3600, description="first retry delay; doubles on each retry")
    lock_wait_seconds: float = Field(
        0, ge=0, le=7 * 86400, description="another run holds the project folder: wait this long for it, then refuse (exit 75)"
    )
    timeout_seconds: dict[str, Annotated[float, Field(gt=0, le=30 * 86400)]] = Field(
        default_factory=dict, description="per-stage time limit, e.g. {train: 3600}"
    )

    @field_validator("timeout_seconds")
    @classmethod
    def _known_stages(cls, limits: dict[str, float]) -> dict[str, float]:
        stages = ("ingest", "validate", "augment", "train", "evaluate", "explain", "ensemble", "leaderboard", "register",
                  "promote")
        for name in limits:
            if name not in stages:
                raise ValueError(f"unknown stage {name!r}; allowed: {', '.join(stages)}")
        return limits


# `register` is also ABCMeta.register on the class; on instances the field wins, as intended.
warnings.filterwarnings("ignore", message='Field name "register" in "Params" shadows', category=UserWarning)


class Params(Section):
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of training and augmentation: same seed, same metrics")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field("auto", description="auto: CUDA, else MPS, else CPU")
    data: DataParams = Field(default_factory=DataParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    augment: AugmentParams = Field(default_factory=AugmentParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    explain: ExplainParams = Field(default_factory=ExplainParams)
    ensemble: EnsembleParams = Field(default_factory=EnsembleParams)
    register: RegisterParams = Field(default_factory=RegisterParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    orchestration: OrchestrationParams = Field(default_factory=OrchestrationParams)
    recipes: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="settings measured on one dataset, merged over `augment` and `train` only when the data is "
                    "that dataset (key: data.source, or the folder/archive name), under `-S` overrides; "
                    "other data starts from the sections themselves",
    )
    # Which recipe load_params merged in (None: none matched the data); said in the run's output.
    _recipe: str | None = PrivateAttr(None)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @field_validator("recipes")
    @classmethod
    def _recipe_sections(cls, recipes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, recipe in recipes.items():
            unknown = sorted(set(recipe) - set(RECIPE_SECTIONS))
            if unknown:
                raise ValueError(f"{name}: {', '.join(unknown)}: a recipe sets only {' and '.join(RECIPE_SECTIONS)}")
        return recipes

    @model_validator(mode="after")
    def _default_model_name(self) -> Params:
        if self.register.model_name is None:
            self.register.model_name = f"{data_name(self.data)}-classifier"
        return self

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain data (for cache keys, MLflow params, DVC)."""
        return self.model_dump(mode="json", by_alias=True)[name]

    @property
    def recipe(self) -> str | None:
        return self._recipe

    def recipe_note(self) -> str:
        """One line for the run's output: which recipe these params took for this data, or none."""
        name = data_name(self.data)
        if self._recipe:
            return (f"recipe: recipes.{self._recipe} of the params file (settings measured on that data) merged "
                    f"over augment and train")
        return (f"recipe: none for data '{name}' (recipes has: {', '.join(self.recipes) or 'none'}): the general "
                f"settings of augment and train (the papers' widths, augment.hflip={str(self.augment.hflip).lower()}); "
                f"tune it with recipes.{name} in the params file")


RECIPE_SECTIONS = ("augment", "train")


def data_name(data: DataParams) -> str:
    """A registry-safe name for the dataset: the source, or the folder / archive / manifest it is read from."""
    import re

    if data.source in ("folder", "archive", "idx", "csv") and data.path:
        stem = Path(data.path.rstrip("/\\")).name
        for suffix in (".tar.gz", ".tgz", ".tar", ".zip", ".csv"):
            stem = stem.removesuffix(suffix)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")
        return name or data.source
    return data.source


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: where the YAML broke and how."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: not valid YAML ({problem}); fix the syntax there (`zooflow params` checks it)"


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as DVC reads params.yaml (YAML 1.2): only true/false are booleans, so `progress: off` and
    `-S train.progress=off` mean the string "off", not False as in PyYAML's YAML 1.1."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")  # 1e-3, 5E4: floats in YAML 1.2
for _first in "-+0123456789.":
    _Yaml12Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, ("tag:yaml.org,2002:float", _FLOAT_12))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); the value is YAML, as in `dvc exp run -S`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected key.path=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
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


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None, check_zoo: bool = True
                ) -> Params:
    """Read params.yaml (missing file: all defaults), apply overrides, validate.

    `check_zoo=False` leaves architecture names unchecked, so torch is never imported: for stages that
    read only `data` (ingest: its process and its decoding workers stay at numpy + PIL)."""
    path = Path(path)
    raw: dict = {}
    if path.exists():
        try:
            raw = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(_yaml_error(path, exc)) from None
        except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, not text
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ParamsError(f"{path}: cannot be read as a params file ({reason}); pass a YAML file") from None
        if not isinstance(raw, dict):
            raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    base = raw
    raw = apply_overrides(base, overrides or [])
    recipe = _matching_recipe(raw)
    if recipe is not None:  # params.yaml < the data's recipe < -S overrides
        raw = apply_overrides(_deep_merge(base, raw["recipes"][recipe]), overrides or [])
    return validate_params(raw, str(path), check_zoo, base=base, recipe=recipe)


def validate_params(raw: dict, where: str, check_zoo: bool = True, *, base: dict | None = None,
                    recipe: str | None = None) -> Params:
    """Params from a raw mapping (what params.yaml holds, overrides and the data's recipe applied); errors
    name `where`. `base` is the mapping before overrides (the other recipes are checked against it),
    `recipe` the one applied. The lab builds each experiment run's params this way (tasks/experiment.py)."""
    path = where  # the name the messages below have always used
    base = raw if base is None else base
    try:
        params = Params.model_validate(raw, context={"check_zoo": check_zoo})
    except ValidationError as exc:
        raise ParamsError(f"{path}: {_format(exc)}") from None
    params._recipe = recipe
    for name, other in params.recipes.items():  # a recipe for other data is checked too: a typo shows now
        if name != recipe:
            try:
                Params.model_validate(_deep_merge(base, other), context={"check_zoo": False})
            except ValidationError as exc:
                raise ParamsError(f"{path}: recipes.{name}: {_format(exc)}") from None
    if not check_zoo:
        return params
    # Recipes for architectures not in this run's list are kept, not refused (`-S train.architectures=
    # [knn]` narrows a run), but a name that is no architecture at all is a typo.
    import models

    known = models.available()
    for section in ("overrides", "model_options"):
        for arch in getattr(params.train, section):
            if arch not in known:
                raise ParamsError(f"{path}: train.{section}.{arch}: unknown architecture; `zooflow zoo` lists them")
    for arch in params.train.overrides:
        try:
            params.train.for_arch(arch)
        except ParamsError as exc:
            raise ParamsError(f"{path}: {exc}") from None
    from tasks.init_weights import check_init

    # train.init for this run's architectures, and wherever a recipe sets its own
    own_init = {arch for arch, override in params.train.overrides.items() if "init" in override}
    for arch in sorted({*params.train.architectures, *own_init}):
        init = params.train.for_arch(arch).init
        where = f"train.overrides.{arch}.init" if arch in own_init else "train.init"
        try:
            check_init(init, arch)
        except ValueError as exc:
            raise ParamsError(f"{path}: {where}: {exc}") from None
    channels = params.data.channels or 3
    for arch in sorted({*params.train.architectures, *params.train.model_options, *params.train.overrides}):
        options = params.train.for_arch(arch).model_options.get(arch, {})
        try:  # built only if this run trains it: a recipe kept for later need not fit today's image size
            check_model_options(arch, options, channels, params.data.image_size,
                                build=arch in params.train.architectures)
        except OptionError as exc:
            where = f"train.model_options.{arch}.{exc.option}" if exc.option else f"train.architectures: {arch}"
            raise ParamsError(f"{path}: {where}: {exc}") from None
    return params


def _matching_recipe(raw: dict) -> str | None:
    """The recipe for the data `raw` names: keyed by the folder/archive's name, else by data.source."""
    recipes = raw.get("recipes")
    if not isinstance(recipes, dict) or not recipes:
        return None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    try:
        name = data_name(DataParams.model_validate(data))
    except ValidationError:  # the full validation names the key
        return None
    for key in (name, data.get("source", DataParams.model_fields["source"].default)):
        if key in recipes and isinstance(recipes[key], dict):
            return key
    return None


BUILD_ARGUMENTS = ("num_classes", "in_channels", "image_size")  # set from the data, never an option


class OptionError(ValueError):
    """An architecture's option (or, when `option` is None, the architecture at this input) is refused."""

    def __init__(self, option: str | None, message: str):
        super().__init__(message)
        self.option = option


def check_model_options(arch: str, options: dict[str, Any], in_channels: int, image_size: int,
                        build: bool = True) -> None:
    """The options name keywords the builder takes, with values of their annotated types, and the model
    builds with them at this input size (on the meta device: no memory, no arithmetic).

    Raises OptionError."""
    import inspect
    import typing

    import models

    builder = models.available()[arch].builder
    signature = inspect.signature(builder)
    forwards = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    takes = [n for n, p in signature.parameters.items()
             if n not in BUILD_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # noqa: BLE001 - an annotation we cannot resolve: check the names only
        hints = {}
    for name, value in options.items():
        if name in BUILD_ARGUMENTS:
            raise OptionError(name, "set from the data (data.image_size, data.channels, the classes), not an option")
        if not forwards and name not in takes:
            raise OptionError(name, f"not an option of {arch}; it takes: {', '.join(takes) or 'none'}")
        if name in hints:
            _check_type(name, value, hints[name])
    if build or forwards:  # a builder that forwards **options: only a build checks their names
        _builds(arch, json.dumps(options, sort_keys=True, default=str), in_channels,
                image_size if build else _design_size(arch))


def _check_type(name: str, value: Any, hint: Any) -> None:
    from pydantic import TypeAdapter, ValidationError as PydanticError

    try:
        TypeAdapter(hint).validate_python(value)
    except PydanticError:
        raise OptionError(name, f"{value!r} is not a {_hint_name(hint)}") from None
    except Exception:  # noqa: BLE001 - a hint pydantic cannot check: the build below will
        pass


def _design_size(arch: str) -> int:
    import models

    return 224 if models.available()[arch].scale == "imagenet" else 32


@functools.lru_cache(maxsize=512)
def _builds(arch: str, options_json: str, in_channels: int, image_size: int) -> None:
    """Build `arch` on the meta device; its TypeError or ValueError becomes the option's error."""
    import torch

    import models

    options = json.loads(options_json)
    try:
        with torch.device("meta"):
            models.build(arch, num_classes=10, in_channels=in_channels, image_size=image_size, **options)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unknown:
            raise OptionError(unknown.group(1), f"not an option of {arch} ({exc})") from None
        raise OptionError(", ".join(options) or None, f"{arch} cannot be built with these options: {exc}") from None
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise OptionError(", ".join(options) or None, f"{arch} cannot be built at data.image_size={image_size} "
                                                      f"with these options: {exc}") from None


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def reference_rows(model: type[BaseModel] = Params, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every leaf key of the schema, in declaration order."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(reference_rows(annotation, f"{key}."))
            continue
        default = field.get_default(call_default_factory=True)
        shown = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        rows.append((key, shown, field.description or ""))
    return rows


def reference_markdown() -> str:
    """The params reference table of the README."""
    lines = ["| key | default | what it does |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | `{default}` | {text} |" for key, default, text in reference_rows()]
    return "\n".join(lines)
