"""How stages run under Prefect: retries only on transient errors, per-stage timeouts, the task runner.

Stage modules wrap their plain functions as bare Prefect tasks; the policies a user sets in
`params.orchestration` are applied here, in one place, when the flow calls them.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import caching
from tasks.errors import UserError
from tasks.layout import Layout
from tasks.params import Params


def transient_only(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a failed stage unless the user's input is at fault: bad params or bad data never heal."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # anything else (HTTP, file system, OOM) may be transient
        return True
    return False


CACHED_STAGES = ("ingest", "validate", "augment", "train", "evaluate")


def configured(task: Task, params: Params, layout: Layout, arch: str | None = None) -> Task:
    """`task` with the retries, timeout and cache that params.orchestration sets for its stage."""
    stage = task.name
    orch = params.orchestration
    options: dict[str, Any] = dict(
        retries=orch.retries,
        retry_delay_seconds=[orch.retry_delay_seconds * 2**i for i in range(max(orch.retries, 1))],
        retry_condition_fn=transient_only,
        timeout_seconds=orch.timeout_seconds.get(stage),
    )
    if stage in CACHED_STAGES and orch.cache:
        # Outputs deleted since the cached run: run again rather than hand on a result whose files are gone.
        options.update(
            cache_key_fn=caching.prefect_key,
            persist_result=True,
            refresh_cache=not caching.outputs_present(stage, layout, arch),
        )
    return task.with_options(**options)


def task_runner(params: Params) -> Any:
    """The runner that fans train/evaluate out over architectures."""
    orch = params.orchestration
    if orch.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if orch.dask_address:
            return DaskTaskRunner(address=orch.dask_address)
        # One architecture per single-threaded worker process; torch would oversubscribe otherwise.
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": orch.max_workers, "threads_per_worker": 1, "processes": True}
        )
    workers = orch.max_workers if orch.task_runner == "threads" else 1
    return ThreadPoolTaskRunner(max_workers=workers)
