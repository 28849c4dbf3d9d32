"""Where training starts (`train.init`): from scratch, or from weights that were trained before.

    scratch                  the architecture's own initialisation (the default)
    models:/NAME@ALIAS       a registered zooflow version: its bundle's weights for this architecture
    models:/NAME/VERSION
    path/to/weights.pt       a state dict file (zooflow's model.pt or checkpoint.pt, or anyone's with the same keys)
    IMAGENET1K_V1            torchvision's pretrained weights by name, for the zoo's architectures that are
                             torchvision's module for module (`TORCHVISION`)

`resolve` turns the setting into a local state dict file (a `Source`): a registered version is downloaded
once into outputs/init/<name>/v<version>/ (a version's files never change); torchvision's file is looked up
in the torch hub cache and never downloaded, so an offline machine gets a one-line error, not a hang.
`identity` is what the train cache key and the resume fingerprint hold: the version an alias pointed at and
the weights' sha256, so moving @staging re-trains. `load_into` puts the weights into the freshly built model:

- read with `weights_only=True`: nothing is unpickled;
- the final classifier keeps its fresh initialisation when the classes differ (their count, or their names
  where the source knows them: a registered version, torchvision's weights, a zooflow model.pt whose
  train.json is beside it), or always with `train.finetune.new_head`; so do GoogLeNet's auxiliary
  classifiers when the count differs;
- grey <-> RGB: the first convolution (`first_conv`: the first nn.Conv2d the model registers, its stem: conv1
  in the ResNets and GoogLeNet, features.0 in VGG, AlexNet and ZFNet, features.0.0 in EfficientNet,
  features.conv0 in DenseNet, conv_proj, the patch embedding, in ViT) is adapted as timm's
  `adapt_input_conv` does: summed over R, G, B for a grey model (a grey image read as R = G = B gives the
  response the RGB network gave), repeated and divided by 3 for an RGB model from grey weights;
- the image size: every convolutional network of the zoo ends in a global (or adaptive) pool, so its
  weights work at any input size its design allows; ViT's position embeddings are interpolated to the new
  patch grid (torchvision's `interpolate_embeddings`);
- anything else that does not fit (another architecture, other options) is a one-line UserError that names
  the tensor and both shapes.

MLflow is imported only to resolve a registry URI: the engine runs without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import UserError
from tasks.files import atomic_dir, read_json, sha256_of, write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tasks.layout import Layout
    from tasks.params import Params

SCRATCH = "scratch"
REGISTRY = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$")
WEIGHTS_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, DEFAULT

# The zoo's architectures that are torchvision's module for module (same keys and shapes at 224 px, 3
# channels, 1000 classes; tests/test_finetune.py checks it): zoo name -> torchvision's name.
TORCHVISION = {
    "alexnet_torchvision": "alexnet", "googlenet_torchvision": "googlenet",
    **{f"vgg{d}{bn}": f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{f"resnet{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": "resnext50_32x4d", "resnext101_32x8d": "resnext101_32x8d",
    "wide_resnet50_2": "wide_resnet50_2",
    **{f"densenet{d}": f"densenet{d}" for d in (121, 169, 201)},
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)},
    "vit_b_16": "vit_b_16", "vit_b_32": "vit_b_32",
}


def source_kind(init: str) -> str:
    """scratch, registry, torchvision or file; a malformed registry URI is a ValueError."""
    if init == SCRATCH:
        return SCRATCH
    if init.startswith("models:"):
        if not REGISTRY.match(init):
            raise ValueError(f"{init!r} is not a registered version: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return "registry"
    if WEIGHTS_NAME.match(init):
        return "torchvision"
    if not init.strip():
        raise ValueError("empty: expected scratch, models:/NAME@ALIAS, models:/NAME/VERSION, a weights file or "
                         "a torchvision weights name")
    return "file"


def check_init(init: str, arch: str) -> None:
    """At params time: the architecture can start from this kind of source (ValueError otherwise)."""
    import models

    kind = source_kind(init)
    if kind == SCRATCH:
        return
    if models.available()[arch].trained_by == "fit":
        raise ValueError(f"{arch} is fitted, not trained: it cannot start from weights; set the init of the "
                         f"trained architectures only (train.overrides.<arch>.init)")
    if kind == "torchvision":
        _torchvision_weights(arch, init)


def _torchvision_weights(arch: str, name: str):
    """torchvision's weights enum member `name` for `arch` (ValueError naming what exists)."""
    from torchvision.models import get_model_weights

    if arch not in TORCHVISION:
        raise ValueError(f"{arch} is not one of torchvision's models, so it has no torchvision weights {name!r}; "
                         f"those exist for: {', '.join(sorted(TORCHVISION))}")
    enum = get_model_weights(TORCHVISION[arch])
    try:
        return enum[name]
    except KeyError:
        raise ValueError(f"{arch} has no torchvision weights {name!r}; it has: "
                         f"{', '.join(w.name for w in enum)}") from None


# --------------------------------------------------------------------------- resolving a source


@dataclass(frozen=True)
class Source:
    """A weights source resolved to a local state dict file."""

    init: str  # as params say it
    kind: str  # registry, torchvision, file
    path: Path  # the state dict
    label: str  # what it is: models:/digits-classifier/3, torchvision:resnet18.IMAGENET1K_V1, the file
    classes: list[str] | None = None  # the classes its head was trained for, when the source says
    built: dict = field(default_factory=dict)  # how the source model was built, when the source says
    parent_version: str | None = None  # models:/NAME/VERSION for a registered version

    @property
    def sha256(self) -> str:
        return sha256_of(self.path)


def resolve(params: Params, layout: Layout, arch: str) -> Source | None:
    """`arch`'s `train.init` as a local state dict file; None for scratch. UserError when unavailable."""
    init = params.train.for_arch(arch).init
    kind = source_kind(init)
    if kind == SCRATCH:
        return None
    if kind == "registry":
        return _registered(params, layout, arch, init)
    if kind == "torchvision":
        return _torchvision(arch, init)
    path = Path(init).expanduser()
    if not path.is_file():
        raise UserError(f"train.init {init}: no such weights file (a path is read from {Path.cwd()})")
    return Source(init, "file", path.resolve(), str(path), classes=_named_classes(path))


def _named_classes(path: Path) -> list[str] | None:
    """The classes of a zooflow model.pt or checkpoint.pt: its train.json beside it names them."""
    record = path.parent / "train.json"
    try:
        return [str(c) for c in read_json(record)["classes"]] if record.is_file() else None
    except (ValueError, KeyError, TypeError):  # not zooflow's, or older: the classes are unknown
        return None


def identity(params: Params, layout: Layout, arch: str) -> str | dict:
    """What the train cache key holds for the start: `scratch`, or the resolved source and its weights'
    sha256 (an alias is keyed by the version it points at now)."""
    source = resolve(params, layout, arch)
    return SCRATCH if source is None else {"from": source.label, "sha256": source.sha256}


def _torchvision(arch: str, name: str) -> Source:
    """torchvision's file from the torch hub cache ($TORCH_HOME/hub/checkpoints), never downloaded."""
    from urllib.parse import urlparse

    import torch

    try:
        weights = _torchvision_weights(arch, name)
    except ValueError as exc:
        raise UserError(f"train.init {name}: {exc}") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not file.is_file():
        raise UserError(f"train.init {name}: torchvision's {TORCHVISION[arch]} weights are not in the local torch "
                        f"cache; put {file.name} (from {weights.url}) into {file.parent} (the folder follows "
                        f"$TORCH_HOME); zooflow does not download them")
    return Source(name, "torchvision", file, f"torchvision:{TORCHVISION[arch]}.{weights.name}",
                  classes=weights.meta.get("categories"))


def _registered(params: Params, layout: Layout, arch: str, init: str) -> Source:
    """The bundle of a registered version, downloaded once into outputs/init/<name>/v<version>/."""
    from mlflow.exceptions import MlflowException

    from tasks import tracking
    from tasks.serving import MANIFEST

    match = REGISTRY.match(init)
    name, alias, version = match["name"], match["alias"], match["version"]
    tracking.check_server(params)
    client = tracking.client(params)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise UserError(f"train.init {init}: not in the registry at {tracking.tracking_uri(params)} "
                        f"({str(exc).splitlines()[0][:200]})") from None
    pinned = f"models:/{name}/{mv.version}"
    folder = layout.root / "outputs" / "init" / name / f"v{mv.version}"
    origin = {"tracking_uri": tracking.tracking_uri(params), "run_id": mv.run_id, "model": pinned}
    def downloaded() -> bool:
        return (folder / MANIFEST).exists() and (folder / "origin.json").exists() \
            and read_json(folder / "origin.json") == origin

    if not downloaded():
        try:
            _download_bundle(params, pinned, folder, origin)
        except OSError:
            if not downloaded():  # not another process (a DDP rank) that got there first
                raise
    manifest = read_json(folder / MANIFEST)
    member = next((m for m in manifest["members"] if m["arch"] == arch), None)
    if member is None:
        held = ", ".join(m["arch"] for m in manifest["members"])
        raise UserError(f"train.init {init}: {pinned} holds {held}, not {arch}; start {arch} from scratch or from "
                        f"a version that has it (train.overrides.{arch}.init)")
    return Source(init, "registry", folder / member["weights"], pinned, classes=list(manifest["classes"]),
                  built=dict(member["build_kwargs"]), parent_version=pinned)


def _download_bundle(params: Params, model_uri: str, folder: Path, origin: dict) -> None:
    """The version's serving bundle (manifest + one state dict per member), written atomically."""
    import shutil
    import tempfile

    import mlflow

    from tasks import tracking
    from tasks.serving import MANIFEST

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                                         tracking_uri=tracking.tracking_uri(params)))
        bundle = next((p.parent for p in local.rglob(MANIFEST)), None)
        if bundle is None:
            raise UserError(f"train.init {model_uri}: not a zooflow model (no {MANIFEST} in its artifacts)")
        with atomic_dir(folder) as out:
            for file in bundle.iterdir():
                shutil.copy2(file, out / file.name)
            write_json(out / "origin.json", origin)


# --------------------------------------------------------------------------- loading into a model


def first_conv(model: nn.Module) -> str | None:
    """The layer that sees the image's channels: the first nn.Conv2d the model registers (its stem);
    None for a model without convolutions (the pixel baselines)."""
    from torch import nn

    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def load_into(model: nn.Module, source: Source, arch: str, classes: list[str], new_head: bool = False) -> dict:
    """Load `source` into `model` (built for this data), adapting the head (a fresh one when the classes
    differ, or always with `new_head`), the first convolution and ViT's position embeddings; returns what
    was done (kept in train.json)."""
    import torch

    from tasks.readers import read_weights

    state = read_weights(source.path, f"set train.init to weights of {arch}")
    if {"format", "model", "optimizer"} <= set(state):  # a zooflow checkpoint.pt: its model
        state = state["model"]
    if source.kind == "torchvision" and arch.startswith("densenet"):
        state = _densenet_keys(state)
    target = model.state_dict()
    record: dict[str, Any] = {"init": source.init, "from": source.label, "sha256": source.sha256,
                              "parent_version": source.parent_version}
    where = f"train.init {source.init}" + (f" ({source.label})" if source.label != source.init else "")

    missing, unexpected = sorted(target.keys() - state.keys()), sorted(state.keys() - target.keys())
    if missing or unexpected:
        parts = [f"{len(missing)} of {arch}'s tensors missing there (first: {missing[0]})" if missing else "",
                 f"{len(unexpected)} there that {arch} lacks (first: {unexpected[0]})" if unexpected else ""]
        raise UserError(f"{where}: not weights of {arch}: {'; '.join(p for p in parts if p)}")

    head = f"{model.classifier_path}." if hasattr(model, "classifier_path") else None
    head_key = f"{head}weight" if head else None
    source_classes = int(state[head_key].shape[0]) if head_key in state else None
    other_names = source.classes is not None and [str(c) for c in source.classes] != [str(c) for c in classes]
    replace_head = head is not None and (new_head or source_classes != len(classes) or other_names)
    record["head"] = "kept"
    if replace_head:
        record["head"] = (f"replaced: {source_classes} classes there, {len(classes)} here" if source_classes != len(classes)
                          else "replaced: the same number of classes, other names" if other_names
                          else "replaced (train.finetune.new_head)")
    elif source.classes is None:
        record["head"] = f"kept: {source_classes} classes there and here (their names unknown there)"

    stem = first_conv(model)
    merged = {}
    for key, want in target.items():
        have = state[key]
        if replace_head and (key.startswith(head) or (
                have.shape != want.shape and have.ndim and have.shape[0] == source_classes
                and want.shape[0] == len(classes))):
            merged[key] = want  # the fresh head (and GoogLeNet's auxiliary heads) for these classes
            continue
        if have.shape != want.shape and stem is not None and key == f"{stem}.weight" and _adapts(have, want):
            merged[key] = _adapt_channels(have, want.shape[1])
            record["first_conv"] = (f"{stem}: {have.shape[1]} -> {want.shape[1]} channels, "
                                    f"{'summed over RGB' if want.shape[1] == 1 else 'grey repeated / 3'}")
            continue
        if have.shape != want.shape and key == "encoder.pos_embedding":  # ViT: another patch grid
            from torchvision.models.vision_transformer import interpolate_embeddings

            merged[key] = interpolate_embeddings(model.image_size, model.patch_size, {key: have})[key]
            record["position_embedding"] = f"interpolated from {have.shape[1] - 1} to {want.shape[1] - 1} patches"
            continue
        if have.shape != want.shape:
            raise UserError(f"{where}: does not fit {arch} as built here: {key} is {_shape(have)} there, "
                            f"{_shape(want)} here{_hint(source, arch, model)}")
        if have.is_floating_point() and not bool(torch.isfinite(have).all()):
            raise UserError(f"{where}: {key} holds NaN or infinite values; these weights cannot start a training")
        merged[key] = have.to(dtype=want.dtype)
    model.load_state_dict(merged)
    return record


def _adapts(have: torch.Tensor, want: torch.Tensor) -> bool:
    """Grey <-> RGB: the shapes differ only in the input channels, 1 on one side, 3 on the other."""
    return (have.ndim == 4 and have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:]
            and {int(have.shape[1]), int(want.shape[1])} == {1, 3})


def _adapt_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """timm's adapt_input_conv for 1 <-> 3: RGB -> grey sums, grey -> RGB repeats and divides."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.repeat(1, channels, 1, 1) / channels


def _densenet_keys(state: dict) -> dict:
    """torchvision's DenseNet files keep the old names `norm.1`; its loader renames them as here."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    return {(m.group(1) + m.group(2) if (m := pattern.match(k)) else k): v for k, v in state.items()}


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "a scalar"


def _hint(source: Source, arch: str, model: nn.Module) -> str:
    if source.built:
        built = ", ".join(f"{k}={v}" for k, v in sorted(source.built.items()))
        return f" (the source was built with {built}; build {arch} the same way: data.image_size, train.model_options)"
    if source.kind == "torchvision":
        return f" (torchvision's weights are for the ImageNet network: set train.model_options.{arch}.variant=imagenet)"
    return f" (are these {arch} weights, built with the same train.model_options?)"


# --------------------------------------------------------------------------- how the build follows the source


def build_options(arch: str, init: str, options: dict) -> dict:
    """The builder's options for a run from `init`: torchvision's weights are for the ImageNet network,
    so an architecture that has a CIFAR variant is built as the ImageNet one (`variant: imagenet`) unless
    the options say otherwise. It takes any input its design allows: the data are not resized for it."""
    import inspect

    import models

    if source_kind(init) != "torchvision" or "variant" in options:
        return options
    if "variant" not in inspect.signature(models.available()[arch].builder).parameters:
        return options
    return {**options, "variant": "imagenet"}


# --------------------------------------------------------------------------- lineage


def lineage_tags(records: dict[str, dict | None]) -> dict[str, str]:
    """MLflow tags of the start of each architecture ({arch: train.json's init record}): `zooflow.init`
    (arch=source, for every member that did not start from scratch) and `zooflow.parent_version` (the
    registered versions they grew from). Empty when all started from scratch."""
    started = {arch: r for arch, r in sorted(records.items()) if r}
    if not started:
        return {}
    tags = {"zooflow.init": ",".join(f"{arch}={r['from']}" for arch, r in started.items())}
    parents = sorted({r["parent_version"] for r in started.values() if r.get("parent_version")})
    if parents:
        tags["zooflow.parent_version"] = ",".join(parents)
    return tags


# --------------------------------------------------------------------------- warm-started retraining


def warm_start(params: Params, alias: str = "staging") -> list[str]:
    """Overrides that retrain `register.model_name@alias` on the current data, from its own weights:
    `train.architectures` are its members (tag `zooflow.members`) and each trained member starts from
    that version, pinned (`models:/NAME/VERSION`), so the whole run uses one version even if the alias
    moves meanwhile. Fitted members (kNN, Bayes) are fitted again."""
    import models
    from mlflow.exceptions import MlflowException

    from tasks import tracking

    name = params.register.model_name
    tracking.check_server(params)
    try:
        mv = tracking.client(params).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise UserError(f"warm start: model {name!r} has no @{alias} version to start from "
                        f"({str(exc).splitlines()[0][:160]}); run the pipeline once from scratch first") from None
    members = (mv.tags or {}).get("zooflow.members")
    if not members:
        raise UserError(f"warm start: {name} version {mv.version} (@{alias}) has no zooflow.members tag: "
                        f"not registered by zooflow")
    archs = [m.split(":")[0] for m in members.split(",")]
    known = models.available()
    overrides = [f"train.architectures=[{', '.join(archs)}]"]
    overrides += [f"train.overrides.{arch}.init=models:/{name}/{mv.version}" for arch in archs
                  if arch in known and known[arch].trained_by == "sgd"]
    return overrides
