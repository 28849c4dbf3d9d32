"""The `zoo-experiment` flow: one claim of the lecture notes, its variations trained through the
engine, its evidence and verdict (tasks/experiment.py has the steps; DESIGN.md, "The flow").

plan ─▶ prepare (ingest once) ─▶ run(variation, seed) ×N ─▶ conclude (result.json, plot, verdict.md)

One MLflow parent run per experiment, a child run per variation and seed; the verdict table as a
Prefect artifact of the flow run.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from tasks import experiment, tracking
from tasks.layout import Layout
from tasks.lock import project_lock
from tasks.orchestration import call, configured, experiment_artifact, stage_task

prepare_task = stage_task(experiment.prepare, "experiment-prepare")
run_task = stage_task(experiment.run_tracked, "experiment-run")
conclude_task = stage_task(experiment.conclude_tracked, "experiment-conclude")


@flow(name="zoo-experiment")
def zoo_experiment(name: str, size: str = "cpu", overrides: list[str] | None = None, workdir: str = ".") -> dict:
    """Run experiment `name` (experiments/<name>.yaml) at `size` (cpu, gpu or tiny), `overrides`
    (key.path=value) applied to every variation, in the project folder `workdir`. Returns result.json's
    content."""
    plan = experiment.plan(name, size, overrides, Path(workdir))
    layout = Layout(plan.project)
    # One run of an experiment at a time; other experiments and the pipeline may run beside it.
    with project_lock(Layout(plan.root), f"the zoo-experiment flow ({name})",
                      plan.base.orchestration.lock_wait_seconds):
        tracking.check_server(plan.base)
        parent = experiment.start_tracked(plan)
        with tracking.ending(plan.base, parent):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            dataset = call(prepare_task, plan.base, layout, plan)
            records = [configured(run_task, run.params, layout, run.key)(
                run.params, layout, plan, run, parent, return_state=True).result() for run in plan.runs]
            seconds = {"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0}
            result = call(conclude_task, plan.base, layout, plan, records, dataset, seconds, parent)
    experiment_artifact(result, parent)
    return result
