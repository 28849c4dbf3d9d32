"""Register the best candidate on val — one architecture or the ensemble — as one MLflow pyfunc model.

The model is `tasks.serving.ZooClassifier` over a bundle (manifest + one `state_dict` per member),
with `models/`, `tasks/serving.py` and `tasks/decode.py` shipped as `code_paths`, a signature of its
outputs (the input contract is the model's own: `tasks.serving.as_nhwc`), an input example, pinned requirements, a model card as the version's description and
lineage tags. The new version gets the alias `challenger`; `tasks.promote` decides about `staging`.

Server mode (`MLFLOW_TRACKING_URI=http://...`): MLflow's HTTP client retries transient errors
(`mlflow.http_retries`), an unreachable server is a `UserError` before anything is written, and a
version whose registration did not complete is deleted again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from tasks import caching, init_weights, tracking
from tasks.errors import UserError
from tasks.files import read_json, write_json
from tasks.layout import Layout
from tasks.leaderboard import best_candidate, candidates  # noqa: F401 - the registry's choice is made there
from tasks.params import Params
from tasks.readers import load_prepared, load_trained, preprocessing
from tasks.serving import BUNDLE_FORMAT, MANIFEST, ZooClassifier

PROJECT = Path(__file__).resolve().parent.parent
TAG = "zooflow."  # prefix of every tag zooflow writes


# --------------------------------------------------------------------------- the tracking server


def is_remote(params: Params) -> bool:
    return tracking.is_server(params)


def connect(params: Params):
    """An MlflowClient for the registry; in server mode, first a bounded health check (a UserError naming
    the URI when the server does not answer, before anything is written)."""
    tracking.check_server(params)
    return tracking.client(params)


@contextmanager
def server_errors(params: Params, doing: str) -> Iterator[None]:
    """An MLflow error that means 'the server is gone' becomes a one-line UserError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        text = str(exc)
        if is_remote(params) and any(s in text for s in ("Max retries", "Connection", "connect", "timed out",
                                                         "503", "502", "504")):
            raise UserError(f"MLflow server at {tracking.tracking_uri(params)} failed while {doing}: "
                            f"{text.splitlines()[0][:300]}") from None
        raise


# --------------------------------------------------------------------------- the bundle


def build_kwargs(layout: Layout, arch: str) -> dict[str, Any]:
    """How `models.build` made `arch`, from the record train.json keeps: sizes and the builder's options."""
    built = read_json(layout.train(arch) / "train.json")["model"]
    return {"num_classes": int(built["num_classes"]), "in_channels": int(built["in_channels"]),
            "image_size": int(built["image_size"]), **built.get("options", {})}


def write_bundle(folder: Path, members: dict[str, tuple[torch.nn.Module, dict, float]], vote: str,
                 classes: list[str], prep: dict) -> dict:
    """Write the serving bundle: `manifest.json` and `<arch>.pt` state dicts (no pickled objects)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for arch, (model, kwargs, weight) in members.items():
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, folder / f"{arch}.pt")
        entries.append({"arch": arch, "build_kwargs": kwargs, "weights": f"{arch}.pt", "weight": float(weight)})
    manifest = {"format": BUNDLE_FORMAT, "classes": [str(c) for c in classes], "vote": vote,
                "members": entries, **prep}
    write_json(folder / MANIFEST, manifest)
    return manifest


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pinned_requirements() -> list[str]:
    import cloudpickle
    import mlflow
    import pandas
    import PIL

    def pin(name: str, version: str) -> str:
        return f"{name}=={version.split('+')[0]}"

    return [pin("mlflow", mlflow.__version__), pin("torch", torch.__version__), pin("numpy", np.__version__),
            pin("pandas", pandas.__version__), pin("cloudpickle", cloudpickle.__version__),
            pin("pillow", PIL.__version__)]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def model_card(cand: dict, lineage: dict, train_info: dict[str, dict], params: Params) -> str:
    """The version description: what it is, on what data, how good, how it was made."""
    import models

    lines = [f"# {params.register.model_name}: {cand['name']}", ""]
    lines += ["## Architecture", ""]
    for arch, weight in cand["members"].items():
        info = models.available().get(arch)
        what = f"{info.family} ({info.year}) — {info.paper}" if info else arch
        t = train_info.get(arch, {})
        lines.append(f"- **{arch}**, weight {weight:.3f}: {what}; {t.get('params', '?')} parameters, "
                     f"trained {t.get('train_seconds', 0):.1f} s on {t.get('device', '?')}, "
                     f"best epoch {t.get('best_epoch', '-')}")
    if cand["kind"] == "ensemble":
        method = cand["name"].split(":", 1)[1]
        how = {"soft": "equal weights", "hard": "majority of top-1 labels", "weighted": "weights fitted on val (NLL)",
               "greedy": "greedy forward selection with replacement on val (Caruana et al. 2004)"}.get(method, method)
        lines.append(f"- combined by {cand['vote']} voting: {how}")
        if "gain_val_accuracy" in cand:
            lines.append(f"- gain over the best single member: val {100 * cand['gain_val_accuracy']:+.2f} pts, "
                         f"test {100 * cand['gain_test_accuracy']:+.2f} pts")
    v, t = cand["val"], cand["test"]
    lines += ["", "## Metrics", "", "| split | top-1 | top-5 | NLL | ECE |", "| --- | --- | --- | --- | --- |",
              f"| val | {_pct(v.get('accuracy'))} | {_pct(v.get('top5'))} | {v.get('nll', 0):.4f} | {v.get('ece', 0):.4f} |",
              f"| test | {_pct(t.get('accuracy'))} | {_pct(t.get('top5'))} | {t.get('nll', 0):.4f} | {t.get('ece', 0):.4f} |",
              "", "Chosen on val; test is reported, never used to choose.", ""]
    lines += ["## What it sees", ""]
    pictures = lineage.get("explanations", {})
    for arch in cand["members"]:
        run = lineage["runs"].get(arch)
        if pictures.get(arch) and run:
            files = ", ".join(f"`{p}`" for p in pictures[arch])
            lines.append(f"- **{arch}**, MLflow run `{run}`: {files} "
                         f"(`mlflow artifacts download --run-id {run} --artifact-path explain`)")
        else:
            lines.append(f"- **{arch}**: no pictures from this run's inputs (explain.enabled: false, or the "
                         f"explanation failed: the leaderboard says why)")
    lines.append("")
    lines += ["## Data", "", f"- data sha256: `{lineage['data_sha256']}`", f"- classes: {lineage['classes']}",
              f"- input: uint8 images N x H x W x C (C = 1 or 3) or N x H x W, any size, pixel values "
              f"0..255 (floats are refused); converted to {lineage['channels']} channel(s) and resized to "
              f"{lineage['image_size']} px as the training data was (PIL bicubic, antialiased)", ""]
    tp = params.train
    opt = tp.optimizer
    lines += ["## Training", "", f"- total train time: {lineage['train_seconds']:.1f} s",
              f"- seed {params.seed}; {tp.epochs} epochs, batch {tp.batch_size}; {opt.name} lr {opt.lr}, "
              f"momentum {opt.momentum}, weight decay {opt.weight_decay}; schedule {tp.schedule.name}; "
              f"label smoothing {tp.label_smoothing}",
              f"- augmentation: `{params.section('augment')}`",
              f"- per-architecture overrides: `{tp.overrides}`" if tp.overrides else "- no per-architecture overrides"]
    for arch in cand["members"]:
        start = train_info.get(arch, {}).get("init")
        if start:
            lines.append(f"- {arch} started from `{start['from']}` (train.init `{start['init']}`, weights sha256 "
                         f"`{start['sha256'][:16]}`); head {start['head']}"
                         + "".join(f"; {label} {start[key]}" for key, label in (
                             ("first_conv", "first convolution"), ("position_embedding", "position embeddings"))
                             if start.get(key)))
        finetune = train_info.get(arch, {}).get("finetune") or {}
        if finetune.get("freeze_epochs") or finetune.get("backbone_lr_mult", 1.0) != 1.0:
            lines.append(f"- {arch} fine-tuned: only the classifier trained for the first "
                         f"{finetune['freeze_epochs']} epoch(s), then everything, the backbone at "
                         f"{finetune['backbone_lr_mult']} x lr")
    lines += ["", "## Lineage", "", f"- git commit: `{lineage['git_commit']}`",
              f"- registered: {lineage['registered_at']}",
              f"- MLflow runs: {', '.join(f'{a}={r}' for a, r in lineage['runs'].items()) or '-'}"]
    parents = init_weights.lineage_tags({a: train_info.get(a, {}).get("init") for a in cand["members"]})
    lines += [f"- grew from {parents['zooflow.parent_version']}" if "zooflow.parent_version" in parents
              else "- no parent version: every member started from scratch or from weights outside the registry", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the stage


def _signature(example: np.ndarray, output):
    """Outputs only: label, class_name, probabilities. An input schema would make MLflow cast a JSON
    request to its dtype before the model sees it (floats in [0, 1] to uint8 zeros); the model checks
    its input itself (`tasks.serving.as_nhwc`) and refuses what it cannot read, with a 400."""
    from mlflow.models import ModelSignature, infer_signature

    return ModelSignature(outputs=infer_signature(example, output).outputs)


MODEL_CODE = '''"""zooflow's served model, logged as code (MLflow "models from code"): nothing is unpickled."""
from mlflow.models import set_model

from tasks.serving import ZooClassifier

set_model(ZooClassifier())
'''


def log_pyfunc(params: Params, run_id: str, bundle: Path, example: np.ndarray):
    """Log the pyfunc into run `run_id`; returns MLflow's ModelInfo.

    The model is logged as code (a three-line script that builds `ZooClassifier`), not pickled;
    `tasks/serving.py` and `tasks/decode.py` (its resize) travel inside a `tasks` package so they import
    as themselves when loaded, and `models/` beside it; the weights are state dicts read with `weights_only=True`.
    """
    import mlflow

    model = ZooClassifier().load_bundle(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "tasks"
        package.mkdir()
        (package / "__init__.py").write_text('"""zooflow serving code shipped with the model."""\n')
        for module in ("serving.py", "decode.py"):
            (package / module).write_text((PROJECT / "tasks" / module).read_text())
        script = Path(tmp) / "zooflow_model.py"
        script.write_text(MODEL_CODE)
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(script),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(PROJECT / "models"), str(package)],
                signature=_signature(example, model.predict(None, example)),
                input_example=example,
                pip_requirements=pinned_requirements(),
                metadata={"zooflow_bundle_format": BUNDLE_FORMAT},
            )


def register_version(params: Params, client, model_info, run_id: str, description: str, tags: dict[str, str]):
    """Create the version and point `challenger` at it — or leave no version behind."""
    from mlflow.exceptions import MlflowException

    name = params.register.model_name
    try:
        client.create_registered_model(name, description="zooflow image classifier; see each version's model card")
    except MlflowException as exc:
        if "ALREADY_EXISTS" not in (exc.error_code or "") and "already exists" not in str(exc):
            raise
    version = client.create_model_version(name, source=model_info.model_uri, run_id=run_id, tags=tags,
                                          description=description, model_id=model_info.model_id)
    try:
        client.set_registered_model_alias(name, "challenger", version.version)
    except BaseException:
        try:
            client.delete_model_version(name, version.version)
        except Exception:  # noqa: BLE001 - the server may be gone; the original error matters
            pass
        raise
    return version


def register(params: Params, layout: Layout, parent_run_id: str | None = None) -> dict:
    """Register the best candidate on val; alias `challenger`. Returns name, version, candidate, metrics."""
    cand = best_candidate(candidates(params, layout))
    data = load_prepared(layout.prepared)
    classes = data.classes
    prep = preprocessing(layout, data)
    members = {arch: (load_trained(layout, arch), build_kwargs(layout, arch), weight)
               for arch, weight in cand["members"].items()}
    train_info = {a: read_json(layout.train(a) / "train.json") if (layout.train(a) / "train.json").exists() else {}
                  for a in cand["members"]}
    runs = {arch: run for arch in cand["members"] if (run := tracking.arch_run_id(layout, arch))}
    from tasks.explain import logged_pictures

    explanations = {arch: logged_pictures(layout, arch) for arch in cand["members"]
                    if caching.is_current("explain", params, layout, arch)}
    val_images, val_labels = data.split("val")
    lineage = {
        "data_sha256": data.data_sha256,
        "classes": classes, "image_size": prep["image_size"], "channels": prep["channels"],
        "git_commit": git_commit(), "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": runs, "train_seconds": float(sum(t.get("train_seconds", 0) or 0 for t in train_info.values())),
        "explanations": explanations,
    }
    return register_candidate(params, layout, cand, members, classes, prep, lineage, train_info,
                              np.asarray(val_images), np.asarray(val_labels), parent_run_id)


def bundle_sha256(members: dict[str, tuple[torch.nn.Module, dict, float]], vote: str, classes: list[str],
                  prep: dict, data_sha256: str) -> str:
    """What makes a registered model the same model: every member's weights and build, the vote, the
    preprocessing and the data it was chosen on."""
    digest = hashlib.sha256(json.dumps({"vote": vote, "classes": classes, "prep": prep, "data": data_sha256,
                                        "members": {a: [kw, w] for a, (_, kw, w) in sorted(members.items())}},
                                       sort_keys=True, default=str).encode())
    for arch, (model, _, _) in sorted(members.items()):
        for key, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{arch}.{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def registered_twin(client, name: str, sha: str):
    """The version of `name` that holds exactly this model (same `zooflow.bundle_sha256`), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    twins = [v for v in versions if (v.tags or {}).get(f"{TAG}bundle_sha256") == sha and v.status == "READY"]
    return max(twins, key=lambda v: int(v.version)) if twins else None


def reuse_twin(params: Params, layout: Layout, client, twin, cand: dict) -> dict:
    """Point `challenger` at the registered version that already holds this very model; say so."""
    name = params.register.model_name
    with server_errors(params, "moving @challenger"):
        client.set_registered_model_alias(name, "challenger", twin.version)
    tags = twin.tags or {}
    summary = {"name": name, "version": str(twin.version), "alias": "challenger", "new": False,
               "why": f"identical to version {twin.version} (same weights and data): nothing new registered",
               "candidate": cand["name"], "kind": cand["kind"], "members": cand["members"],
               "val_accuracy": cand["val"]["accuracy"], "test_accuracy": cand["test"]["accuracy"],
               "served_val_accuracy": float(tags.get(f"{TAG}served_val_accuracy", "nan")),
               "run_id": twin.run_id, "model_uri": f"models:/{name}/{twin.version}",
               "eval_status": tags.get(f"{TAG}eval_status", "unknown")}
    write_json(layout.register / "registered.json", summary)
    return summary


def register_candidate(params: Params, layout: Layout, cand: dict, members: dict, classes: list[str],
                       prep: dict, lineage: dict, train_info: dict, val_images: np.ndarray, val_labels: np.ndarray,
                       parent_run_id: str | None = None) -> dict:
    """Bundle `members`, check the bundle reproduces the val accuracy, log, register, alias.

    A model bit-identical to a registered version (same weights, build, vote and data) is not registered
    again: `challenger` points at that version and the summary says so (`new: false`)."""
    client = connect(params)
    name = params.register.model_name
    sha = bundle_sha256(members, cand["vote"], classes, prep, lineage["data_sha256"])
    with server_errors(params, "looking for an identical registered version"):
        twin = registered_twin(client, name, sha)
    if twin is not None:
        return reuse_twin(params, layout, client, twin, cand)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle(bundle, members, cand["vote"], classes, prep)
        served = ZooClassifier().load_bundle(bundle)
        served_acc = float((served.predict_proba(val_images).argmax(1) == val_labels).mean())
        tags = {
            f"{TAG}kind": cand["kind"], f"{TAG}candidate": cand["name"],
            f"{TAG}members": ",".join(f"{a}:{w:.4f}" for a, w in cand["members"].items()),
            f"{TAG}val_accuracy": f"{cand['val']['accuracy']:.6f}",
            f"{TAG}test_accuracy": f"{cand['test']['accuracy']:.6f}",
            f"{TAG}served_val_accuracy": f"{served_acc:.6f}",
            f"{TAG}data_sha256": lineage["data_sha256"], f"{TAG}git_commit": lineage["git_commit"],
            f"{TAG}source_runs": ",".join(f"{a}={r}" for a, r in lineage["runs"].items()),
            f"{TAG}parent_run_id": parent_run_id or "",
            f"{TAG}bundle_sha256": sha,
            f"{TAG}eval_status": "passed" if abs(served_acc - cand["val"]["accuracy"]) <= 0.02 else "failed",
            # where the members started: zooflow.init, and zooflow.parent_version for a registered parent
            **init_weights.lineage_tags({a: train_info.get(a, {}).get("init") for a in cand["members"]}),
        }
        description = model_card(cand, lineage, train_info, params)
        with server_errors(params, "registering the model"):
            run_id = tracking.start_run(params, "register", parent_run_id,
                                        tags={f"{TAG}stage": "register", f"{TAG}candidate": cand["name"]})
            with tracking.ending(params, run_id):
                tracking.log_metrics(params, run_id, {"val_accuracy": cand["val"]["accuracy"],
                                                      "test_accuracy": cand["test"]["accuracy"],
                                                      "served_val_accuracy": served_acc})
                example = np.ascontiguousarray(val_images[:2])
                info = log_pyfunc(params, run_id, bundle, example)
                version = register_version(params, client, info, run_id, description, tags)
    summary = {"name": name, "version": str(version.version), "alias": "challenger", "new": True,
               "why": f"registered as version {version.version}",
               "candidate": cand["name"], "kind": cand["kind"], "members": cand["members"],
               "val_accuracy": cand["val"]["accuracy"], "test_accuracy": cand["test"]["accuracy"],
               "served_val_accuracy": served_acc, "run_id": run_id, "model_uri": info.model_uri,
               "eval_status": tags[f"{TAG}eval_status"]}
    write_json(layout.register / "registered.json", summary)
    return summary
