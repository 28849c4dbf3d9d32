"""The `zoo-pipeline` flow: the DAG of DESIGN.md, one task call per stage.

ingest ─▶ validate ─▶ augment ─▶ train(arch) ×N ─▶ evaluate ×N ─▶ explain ×N ─▶ ensemble ─▶ register ─▶ promote?
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

from prefect import flow, get_run_logger
from prefect.states import Failed

import models

from tasks import init_weights, orchestration, tracking
from tasks.augment import augment
from tasks.ensemble import ensemble
from tasks.evaluate import evaluate_tracked
from tasks.explain import explain_tracked
from tasks.ingest import ingest
from tasks.errors import ArchitecturesFailed, UserError
from tasks.layout import Layout
from tasks.lock import project_lock
from tasks.leaderboard import leaderboard
from tasks.orchestration import call, configured, mlflow_runs_artifact, stage_task, task_runner
from tasks.params import DataParams, Params, RegisterParams, TrainParams, load_params
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
explain_task = stage_task(explain_tracked, "explain")
ensemble_task = stage_task(ensemble, "ensemble")
leaderboard_task = stage_task(leaderboard, "leaderboard")
register_task = stage_task(register, "register")
promote_task = stage_task(promote, "promote")


@flow(name="train-zoo")
def train_zoo(params: Params, layout: Layout, parent_run_id: str):
    """Train, evaluate and explain every architecture; one failing does not stop the others.

    Returns {"archs": {arch: "ok" | why it failed}, "unexplained": {arch: why its explanation failed}},
    in a Failed state when any architecture failed. A failed explanation does not fail its architecture:
    the model's numbers stand without pictures, and the leaderboard says so.
    """
    futures = {}
    for arch in params.train.architectures:
        trained = configured(train_task, params, layout, arch).submit(params, layout, arch, parent_run_id)
        evaluated = configured(evaluate_task, params, layout, arch).submit(params, layout, arch, wait_for=[trained])
        explained = (configured(explain_task, params, layout, arch).submit(params, layout, arch, wait_for=[evaluated])
                     if params.explain.enabled else None)
        futures[arch] = (trained, evaluated, explained)
    outcome, unexplained = {}, {}
    for arch, (trained, evaluated, explained) in futures.items():
        evaluated.wait()
        # The first stage that failed says why (evaluate only knows its upstream did not complete).
        state = next((f.state for f in (trained, evaluated) if not f.state.is_completed()), None)
        outcome[arch] = "ok" if state is None else orchestration.failure_reason(state)
        if explained is not None and state is None:
            explained.wait()
            if not explained.state.is_completed():
                unexplained[arch] = orchestration.failure_reason(explained.state)
    result = {"archs": outcome, "unexplained": unexplained}
    failed = sorted(arch for arch, why in outcome.items() if why != "ok")
    if failed:
        return Failed(message=f"{len(failed)} of {len(outcome)} architectures failed: {', '.join(failed)}",
                      data=result)
    return result


# The typed parameters of a deployment run: the types of the params schema itself, so Prefect's form
# offers and validates what params.yaml would (an architecture from the zoo, epochs >= 1, a source).
Architecture = Literal[tuple(sorted(models.available()))]  # type: ignore[valid-type]
Epochs = Annotated[int, *TrainParams.model_fields["epochs"].metadata]
DataSource = DataParams.model_fields["source"].annotation
ModelName = Annotated[str, *RegisterParams.model_fields["model_name"].metadata]


@flow(name="zoo-pipeline")
def zoo_pipeline(
    params_file: str = "params.yaml",
    overrides: Optional[list[str]] = None,
    workdir: str = ".",
    architectures: Optional[list[Architecture]] = None,
    epochs: Optional[Epochs] = None,
    data_source: Optional[DataSource] = None,
    data_path: Optional[str] = None,
    model_name: Optional[ModelName] = None,
    warm_start: Optional[str] = None,
) -> dict:
    """Run the whole pipeline on the dataset and zoo that `params_file` (plus `-S` style overrides) name.

    Args:
        params_file: the params file, read from the working directory
        overrides: `key.path=value` settings over the params file (as `zooflow run -S`), applied last
        workdir: the folder the run writes into (data/, outputs/, reports/), one run at a time
        architectures: the zoo to train (train.architectures); empty: the params file's
        epochs: passes over the train split (train.epochs); empty: the params file's
        data_source: where the images come from (data.source); empty: the params file's
        data_path: the folder, archive or manifest of the images (data.path)
        model_name: the registered model (register.model_name); empty: named after the data
        warm_start: an alias (staging): retrain the architectures of the model there from its weights
            (`tasks.init_weights.warm_start`), and the gate decides
    """
    try:
        overrides = typed_overrides(architectures, epochs, data_source, data_path, model_name) + list(overrides or [])
        params = load_params(Path(params_file), overrides)
        layout = Layout(Path(workdir))
        with project_lock(layout, "the zoo-pipeline flow", params.orchestration.lock_wait_seconds):
            tracking.check_server(params)  # a server that is down: one line now, not minutes of retries per stage
            if warm_start:
                params = load_params(Path(params_file), [*overrides, *init_weights.warm_start(params, warm_start)])
            parent = tracking.start_run(params, "zoo-pipeline", tags={"zooflow.params_file": params_file,
                                                                      "zooflow.recipe": params.recipe or "none"})
            try:
                with tracking.ending(params, parent):
                    tracking.log_params(params, parent, params.model_dump(mode="json", by_alias=True))
                    return _stages(params, layout, parent)
            finally:
                mlflow_runs_artifact(params, layout, parent)
    except (UserError, ArchitecturesFailed) as exc:  # the run's state says why, without a traceback in the log
        return Failed(message=orchestration.first_line(exc), data=exc)


def typed_overrides(architectures: list[str] | None, epochs: int | None, data_source: str | None,
                    data_path: str | None, model_name: str | None) -> list[str]:
    """The typed flow parameters as `key.path=value` overrides (values as JSON, which is YAML)."""
    keys = {"train.architectures": architectures, "train.epochs": epochs, "data.source": data_source,
            "data.path": data_path, "register.model_name": model_name}
    return [f"{key}={json.dumps(value)}" for key, value in keys.items() if value not in (None, [])]


def _stages(params: Params, layout: Layout, parent: str) -> dict:
    logger = get_run_logger()
    logger.info(params.recipe_note())
    call(ingest_task, params, layout)
    orchestration.validation_artifact(layout, call(validate_task, params, layout))
    call(augment_task, params, layout)

    zoo = train_zoo.with_options(task_runner=task_runner(params))(params, layout, parent, return_state=True)
    result = zoo.result(raise_on_failure=False)
    outcome = result["archs"]
    failed = {arch: why for arch, why in outcome.items() if why != "ok"}
    for arch, why in failed.items():
        logger.error("architecture %s failed: %s", arch, why)
    notes = {arch: f"explain failed: {why}" for arch, why in result["unexplained"].items()}
    for arch, note in notes.items():
        logger.warning("architecture %s: %s (its metrics stand; no pictures)", arch, note)

    if len(failed) < len(outcome):
        call(ensemble_task, params, layout)
    rows = call(leaderboard_task, params, layout, failed, notes)
    orchestration.leaderboard_artifact(rows)
    if params.explain.enabled:
        orchestration.explanations_artifact(params, layout, rows)
    tracking.log_pipeline_results(params, layout, parent, rows)
    summary = {"leaderboard": rows, "registered": None, "promoted": None, "failed": failed}
    if failed and params.orchestration.fail_fast:
        raise ArchitecturesFailed(f"{zoo.message}; nothing registered (orchestration.fail_fast: true)", summary)
    summary["registered"] = call(register_task, params, layout, parent)
    tracking.log_registered(params, parent, summary["registered"])
    summary["promoted"] = call(promote_task, params, layout)
    if failed:
        logger.warning("completed with %d failed architecture(s) (orchestration.fail_fast: false): %s",
                       len(failed), ", ".join(sorted(failed)))
    return summary
