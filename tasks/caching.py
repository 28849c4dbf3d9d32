"""Cache keys for the stages, built from their real inputs: the data's sha256, the stage's own params
section, and the code version. A re-run skips what is done and re-does exactly what changed.

The key deliberately ignores what a stage does not read (changing `train.epochs` keeps ingest and
validate cached) and anything run-specific (MLflow run ids).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from tasks.layout import Layout
from tasks.params import Params

PACKAGES = ("tasks", "models")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the pipeline's source: editing a stage or a model invalidates what it produced."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def data_sha256(layout: Layout) -> str | None:
    meta = layout.prepared / "meta.json"
    return json.loads(meta.read_text()).get("data_sha256") if meta.exists() else None


def source_identity(params: Params) -> dict[str, Any]:
    """What ingest reads: the source's files by name, size and modification time (cheap to list)."""
    path = Path(params.data.path) if params.data.path else None
    if path is None or not path.exists():
        return {"source": params.data.source}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"source": params.data.source, "files": hashlib.sha256(repr(listing).encode()).hexdigest()}


def stage_inputs(stage: str, params: Params, layout: Layout, arch: str | None = None) -> dict[str, Any]:
    """Exactly what `stage` reads."""
    data = {"data_sha256": data_sha256(layout)}
    if stage == "ingest":
        return {"data": params.section("data"), "source": source_identity(params)}
    if stage == "validate":
        return {**data, "validate": params.section("validate")}
    if stage == "augment":
        return {**data, "augment": params.section("augment"), "seed": params.seed}
    if stage in ("train", "evaluate"):
        trained = {
            **data,
            "arch": arch,
            "augment": params.section("augment"),
            "train": params.train.for_arch(arch).model_dump(mode="json", exclude={"architectures", "overrides"}),
            "model_options": params.train.model_options.get(arch, {}),
            "seed": params.seed,
            "device": params.device,
        }
        return trained if stage == "train" else {**trained, "evaluate": params.section("evaluate")}
    raise ValueError(f"stage {stage!r} is not cached")


def cache_key(stage: str, params: Params, layout: Layout, arch: str | None = None) -> str:
    # The project folder is part of the key: Prefect keeps cache records in one store per user
    # (~/.prefect/storage), and another clone's outputs are not this one's.
    blob = json.dumps(
        {"stage": stage, "code": code_version(), "project": layout.root.as_posix(),
         **stage_inputs(stage, params, layout, arch)},
        sort_keys=True,
        default=str,
    )
    return f"zooflow-{stage}-{arch or 'all'}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def prefect_key(task_ctx: Any, inputs: dict[str, Any]) -> str:
    """A Prefect `cache_key_fn`: stage tasks take (params, layout[, arch, ...])."""
    stage = task_ctx.task.name
    return cache_key(stage, inputs["params"], inputs["layout"], inputs.get("arch"))


def outputs_present(stage: str, layout: Layout, arch: str | None = None) -> bool:
    """Whether the stage's outputs are on disk: a cached state is only trusted when they are."""
    marker = {
        "ingest": lambda: layout.prepared / "meta.json",
        "validate": lambda: layout.validation / "result.json",
        "augment": lambda: layout.augment / "stats.json",
        "train": lambda: layout.train(arch) / "model.pt",
        "evaluate": lambda: layout.eval(arch) / "metrics.json",
    }[stage]()
    return marker.exists()
