"""What each cached stage reads, declared once, and the stamp its outputs carry.

`READS` says, per stage, which params sections, source files and upstream outputs it reads. From it:
- `cache_key(stage, ...)`: a hash of exactly those inputs as they are now (the params' values, the
  code's bytes, a digest of each upstream output; for train, the weights it starts from, `train.init`
  resolved: a registry alias by the version it points at now). What a stage does not read (changing
  `train.epochs` for ingest) does not move its key; run-specific things (MLflow ids, the folder) are
  not in it.
- the stamp: every stage writes `stage.json` into its outputs (the key, the inputs it was made from,
  its summary). A re-run skips the stage only when the stamp's key equals this run's key
  (`cached_summary`), and the downstream stages read only outputs whose stamp is current
  (`is_current`): a number zooflow reports always belongs to this run's inputs.
- `dvc.yaml`'s `deps:` and `params:` list the same things (a test holds them equal), and a training
  checkpoint resumes only under the same train key (`tasks.train`).

The stamps are plain JSON in the project folder: no Prefect result store is read, so nothing is unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.files import read_json, sha256_of, write_json
from tasks.layout import Layout
from tasks.params import Params

ROOT = Path(__file__).resolve().parents[1]
STAMP = "stage.json"


@dataclass(frozen=True)
class Reads:
    """What a stage reads: params sections, source code (files or folders), upstream outputs."""

    params: tuple[str, ...]
    code: tuple[str, ...]
    outputs: tuple[str, ...] = ()


COMMON_CODE = ("tasks/readers.py",)  # every stage reads its inputs through it

READS: dict[str, Reads] = {
    "ingest": Reads(("data",), ("tasks/ingest.py", "tasks/sources.py", "tasks/decode.py")),
    "validate": Reads(("validate",), ("tasks/validate.py",), ("data/prepared",)),
    # `recipes` are merged into augment and train by load_params: the key holds their effective values,
    # DVC (which reads params.yaml as written) watches the recipes too.
    "augment": Reads(("seed", "augment", "recipes"), ("tasks/augment.py",), ("data/prepared",)),
    "train": Reads(
        ("seed", "device", "augment", "train", "recipes"),
        ("tasks/train.py", "tasks/engine.py", "tasks/optim.py", "tasks/augment.py", "tasks/distributed.py",
         "tasks/init_weights.py", "models"),
        ("data/prepared", "data/augment", "reports/validation"),
    ),
    "evaluate": Reads(
        ("evaluate",), ("tasks/evaluate.py", "tasks/serving.py", "tasks/decode.py"), ("outputs/train/{arch}", "data/prepared", "data/augment")
    ),
    "explain": Reads(
        ("explain",), ("tasks/explain.py", "tasks/evaluate.py", "tasks/serving.py"),
        ("outputs/train/{arch}", "data/prepared", "data/augment"),
    ),
}
PER_ARCH = ("train", "evaluate", "explain")  # the stages that run once per architecture
STAGES = tuple(READS)


# --------------------------------------------------------------------------- the inputs


@functools.lru_cache(maxsize=None)
def code_digest(paths: tuple[str, ...]) -> str:
    """A hash of the source files under `paths` (relative to the project's code)."""
    digest = hashlib.sha256()
    for rel in sorted(paths):
        path = ROOT / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(ROOT).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def params_inputs(stage: str, params: Params, arch: str | None) -> dict[str, Any]:
    """The params a stage reads; for `train` only `arch`'s recipe (its override merged); without the keys
    that change how a run executes but not what it computes (`EXECUTION_ONLY` of train and explain)."""
    out: dict[str, Any] = {}
    for name in READS[stage].params:
        if name == "train":
            tp = params.train.for_arch(arch)
            # `init` is keyed by what it resolves to (stage_inputs), not by how params spell it
            recipe = tp.model_dump(mode="json", exclude={"architectures", "overrides", "model_options", "init",
                                                         *tp.EXECUTION_ONLY})
            out["train"] = {**recipe, "model_options": tp.model_options.get(arch, {})}
        elif name == "recipes":
            continue  # already merged into the sections above
        elif name in ("seed", "device"):
            out[name] = getattr(params, name)
        elif name == "explain":
            out[name] = params.explain.model_dump(mode="json", exclude=set(params.explain.EXECUTION_ONLY))
        else:
            out[name] = params.section(name)
    return out


def output_digest(path: str, layout: Layout, arch: str | None) -> str | None:
    """What an upstream output is, cheaply: the data's hash, the stats' bytes, the weights' hash."""
    folder = {"data/prepared": layout.prepared, "data/augment": layout.augment,
              "reports/validation": layout.validation}.get(path) or layout.root / path.format(arch=arch)
    if path == "data/prepared":
        meta = folder / "meta.json"
        return read_json(meta).get("data_sha256") if meta.exists() else None
    if path == "data/augment":
        files = [folder / "stats.json", folder / "policy.json"]
        return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.exists())).hexdigest() if all(
            f.exists() for f in files) else None
    if path == "reports/validation":  # that validation passed, on this data
        result = folder / "result.json"
        if not result.exists():
            return None
        report = read_json(result)
        return f"{report.get('data_sha256')}:{report.get('success')}"
    if path == "outputs/train/{arch}":
        weights = folder / "model.pt"
        return sha256_of(weights) if weights.exists() else None
    raise ValueError(f"no digest for {path!r}")


def source_identity(params: Params) -> dict[str, Any]:
    """What ingest reads besides params: the source's files by name, size and modification time."""
    path = Path(params.data.path) if params.data.path else None
    if path is None or not path.exists():
        return {"source": params.data.source}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"source": params.data.source, "files": hashlib.sha256(repr(listing).encode()).hexdigest()}


def stage_inputs(stage: str, params: Params, layout: Layout, arch: str | None = None) -> dict[str, Any]:
    """Exactly what `stage` reads, as it is now."""
    reads = READS[stage]
    inputs: dict[str, Any] = {"stage": stage, "arch": arch, "params": params_inputs(stage, params, arch),
                              "code": code_digest(tuple(reads.code) + COMMON_CODE),
                              "outputs": {p: output_digest(p, layout, arch) for p in reads.outputs}}
    if stage == "ingest":
        inputs["source"] = source_identity(params)
    if stage == "train":  # the weights it starts from: an alias by the version it points at now
        from tasks import init_weights

        inputs["init"] = init_weights.identity(params, layout, arch)
    return inputs


def cache_key(stage: str, params: Params, layout: Layout, arch: str | None = None) -> str:
    return _key(stage_inputs(stage, params, layout, arch))


def _key(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return f"{inputs['stage']}-{inputs['arch'] or 'all'}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


# --------------------------------------------------------------------------- the stamp


def output_folder(stage: str, layout: Layout, arch: str | None = None) -> Path:
    return {
        "ingest": lambda: layout.prepared,
        "validate": lambda: layout.validation,
        "augment": lambda: layout.augment,
        "train": lambda: layout.train(arch),
        "evaluate": lambda: layout.eval(arch),
        "explain": lambda: layout.explain(arch),
    }[stage]()


def read_stamp(stage: str, layout: Layout, arch: str | None = None) -> dict | None:
    path = output_folder(stage, layout, arch) / STAMP
    try:
        return read_json(path) if path.exists() else None
    except ValueError:  # a broken stamp vouches for nothing
        return None


def is_current(stage: str, params: Params, layout: Layout, arch: str | None = None) -> bool:
    """Whether the outputs of `stage` on disk were made by this run's inputs."""
    stamp = read_stamp(stage, layout, arch)
    return stamp is not None and stamp.get("key") == cache_key(stage, params, layout, arch)


def cached_summary(stage: str, params: Params, layout: Layout, arch: str | None = None) -> dict | None:
    """The summary the stage returned when it made the outputs on disk, if they match this run's inputs."""
    stamp = read_stamp(stage, layout, arch)
    if stamp is None or stamp.get("key") != cache_key(stage, params, layout, arch):
        return None
    return stamp.get("summary")


def run_stage(stage: str, fn: Callable[..., dict], params: Params, layout: Layout, *args: Any,
              arch: str | None = None) -> dict:
    """Run the stage function, then stamp its outputs with the key of the inputs it ran on.

    The key is taken before the run: what the stage read is what was there when it started."""
    inputs = stage_inputs(stage, params, layout, arch)
    key = _key(inputs)
    summary = fn(params, layout, *args)
    write_json(output_folder(stage, layout, arch) / STAMP, {
        "key": key, "inputs": inputs, "summary": summary,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return summary


def current_evaluations(params: Params, layout: Layout, archs: list[str]) -> dict[str, str]:
    """{arch: evaluate key} for the architectures whose evaluation on disk was made by this run's inputs."""
    out = {}
    for arch in archs:
        stamp = read_stamp("evaluate", layout, arch)
        if stamp is not None and stamp.get("key") == cache_key("evaluate", params, layout, arch):
            out[arch] = stamp["key"]
    return out


def ensemble_is_current(params: Params, layout: Layout) -> bool:
    """Whether outputs/ensemble/ combines exactly evaluations that are current (it records their keys)."""
    path = layout.ensemble / "members.json"
    if not path.exists():
        return False
    keys = read_json(path).get("member_keys") or {}
    return bool(keys) and current_evaluations(params, layout, list(keys)) == keys
