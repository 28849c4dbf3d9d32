"""The `zoo-pipeline` flow: the DAG of DESIGN.md, one task call per stage.

ingest ─▶ validate ─▶ augment ─▶ train(arch) ×N ─▶ evaluate ×N ─▶ ensemble ─▶ register ─▶ promote?
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks import orchestration, tracking
from tasks.augment import augment
from tasks.ensemble import ensemble
from tasks.evaluate import evaluate_tracked
from tasks.ingest import ingest
from tasks.layout import Layout
from tasks.leaderboard import leaderboard
from tasks.orchestration import configured, mlflow_runs_artifact, stage_task, task_runner
from tasks.params import Params, load_params
from tasks.promote import promote
from tasks.register import register
from tasks.train import train_tracked
from tasks.validate import validate

# The stages as Prefect tasks, named as their cache keys and the UI know them.
ingest_task = stage_task(ingest, "ingest")
validate_task = stage_task(validate, "validate")
augment_task = stage_task(augment, "augment")
train_task = stage_task(train_tracked, "train")
evaluate_task = stage_task(evaluate_tracked, "evaluate")
ensemble_task = stage_task(ensemble, "ensemble")
leaderboard_task = stage_task(leaderboard, "leaderboard")
register_task = stage_task(register, "register")
promote_task = stage_task(promote, "promote")


@flow(name="train-zoo")
def train_zoo(params: Params, layout: Layout, parent_run_id: str) -> dict[str, str]:
    """Train and evaluate every architecture; one failing does not stop the others.

    Returns {arch: "ok" | the failure's message}.
    """
    futures = {}
    for arch in params.train.architectures:
        trained = configured(train_task, params, layout, arch).submit(params, layout, arch, parent_run_id)
        evaluated = configured(evaluate_task, params, layout, arch).submit(params, layout, arch, wait_for=[trained])
        futures[arch] = (trained, evaluated)
    outcome = {}
    for arch, (trained, evaluated) in futures.items():
        evaluated.wait()
        # The first stage that failed says why (evaluate only knows its upstream did not complete).
        state = next((f.state for f in (trained, evaluated) if not f.state.is_completed()), None)
        outcome[arch] = "ok" if state is None else (state.message or state.name)
    return outcome


@flow(name="zoo-pipeline")
def zoo_pipeline(
    params_file: str = "params.yaml", overrides: list[str] | None = None, workdir: str = "."
) -> dict:
    """Run the whole pipeline on the dataset and zoo that `params_file` (plus `-S` style overrides) name."""
    logger = get_run_logger()
    params = load_params(Path(workdir) / params_file, overrides)
    layout = Layout(Path(workdir))
    parent = tracking.start_run(params, "zoo-pipeline", tags={"zooflow.params_file": params_file})

    configured(ingest_task, params, layout)(params, layout)
    validated = configured(validate_task, params, layout)(params, layout)
    orchestration.validation_artifact(layout, validated)
    configured(augment_task, params, layout)(params, layout)

    outcome = train_zoo.with_options(task_runner=task_runner(params))(params, layout, parent)
    failed = {arch: why for arch, why in outcome.items() if why != "ok"}
    for arch, why in failed.items():
        logger.error("architecture %s failed: %s", arch, why)

    configured(ensemble_task, params, layout)(params, layout)
    rows = configured(leaderboard_task, params, layout)(params, layout, failed)
    orchestration.leaderboard_artifact(rows)
    registered = configured(register_task, params, layout)(params, layout, parent)
    promoted = configured(promote_task, params, layout)(params, layout)
    tracking.end_run(params, parent, "FAILED" if failed else "FINISHED")
    mlflow_runs_artifact(params, layout, parent)

    summary = {"leaderboard": rows, "registered": registered, "promoted": promoted, "failed": failed}
    if failed and params.orchestration.fail_fast:
        raise RuntimeError(f"{len(failed)} architecture(s) failed: {', '.join(sorted(failed))}")
    if failed:
        logger.warning("completed with %d failed architecture(s) (orchestration.fail_fast: false): %s",
                       len(failed), ", ".join(sorted(failed)))
    return summary
