"""How stages run under Prefect: the one place that wraps them.

Stage modules are plain functions and import no Prefect (the engine runs where Prefect is not
installed). `stage_task` makes a stage a Prefect task; `configured` applies the policies a user sets in
`params.orchestration` (retries only on transient errors, per-stage timeouts, the cache) when the flow
calls it; `task_runner` fans architectures out; the artifacts are the run's pages in the Prefect UI.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import caching
from tasks.errors import UserError
from tasks.layout import Layout
from tasks.params import Params


def stage_task(fn: Callable, name: str) -> Task:
    """A stage's plain function as a Prefect task named `name`. A cached stage (`caching.READS`) first
    looks at the stamp of its outputs: made by this run's inputs, it answers `Cached` with the summary the
    stamp keeps; else it runs and stamps them. Prefect's own result store is not used: no record in it
    is ever read, so nothing is unpickled."""
    if name in caching.STAGES:
        fn = _reusing(fn, name)
    if name == "train":
        fn = _epochs_on_the_root_run(fn)
    return task(name=name, cache_policy=NO_CACHE, persist_result=False)(_quiet_user_errors(fn))


def _quiet_user_errors(fn: Callable) -> Callable:
    """A user error (bad data, bad params, a diverged model) fails the task with its one-line message as a
    state, not as a raised exception that Prefect would log with a traceback; callers still get the error
    from the state (`state.result()` raises it)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            return Failed(message=first_line(exc), data=exc)

    return run


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


PROGRESS = "[train "  # how the engine's per-epoch lines begin (tasks.engine.Progress)


class _ToRootRun(logging.Handler):
    """Sends this task run's per-epoch lines to the API once more, as logs of the root flow run."""

    def __init__(self, task_run_id: str, root_flow_run_id: str):
        from prefect.logging.handlers import APILogHandler

        super().__init__()
        self.task_run_id, self.root = task_run_id, root_flow_run_id
        self.api = APILogHandler()

    def emit(self, record: logging.LogRecord) -> None:
        if str(getattr(record, "task_run_id", "")) == self.task_run_id and record.getMessage().startswith(PROGRESS):
            self.api.emit(logging.makeLogRecord({**record.__dict__, "flow_run_id": self.root}))


def _epochs_on_the_root_run(fn: Callable) -> Callable:
    """Training runs in the `train-zoo` subflow, and a flow run's Logs tab shows only its own logs: the
    per-epoch lines (printed, and logged by `log_prints`) go to the pipeline's run too."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from prefect.context import TaskRunContext
        from prefect.runtime import flow_run

        context = TaskRunContext.get()
        root = flow_run.root_flow_run_id if context else None
        if context is None or root is None or str(root) == str(context.task_run.flow_run_id):
            return fn(*args, **kwargs)
        handler = _ToRootRun(str(context.task_run.id), str(root))
        logger = logging.getLogger("prefect.task_runs")
        logger.addHandler(handler)
        try:
            return fn(*args, **kwargs)
        finally:
            logger.removeHandler(handler)

    return run


def _reusing(fn: Callable, stage: str) -> Callable:
    @functools.wraps(fn)
    def run(params: Params, layout: Layout, *args: Any) -> Any:
        arch = args[0] if stage in caching.PER_ARCH else None
        if params.orchestration.cache:
            summary = caching.cached_summary(stage, params, layout, arch)
            if summary is not None:
                folder = caching.output_folder(stage, layout, arch).relative_to(layout.root)
                return Completed(name="Cached", data=summary,
                                 message=f"{folder} was made by the same inputs (data, params, code)")
        return caching.run_stage(stage, fn, params, layout, *args, arch=arch)

    return run


# Errors that a retry can heal: the network, a server, a busy database. Bad params, bad data, a
# diverged model and programming errors (TypeError, KeyError, ...) fail the same way every time.
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):  # requests' and urllib's errors are OSErrors too
        return exc.errno is None or exc.errno in _TRANSIENT_ERRNOS
    name = type(exc).__name__
    if name == "MlflowException":  # the tracking server answered 5xx, or not at all
        return getattr(exc, "get_http_status_code", lambda: 500)() >= 500
    return name == "OperationalError" and "locked" in str(exc)  # SQLite: database is locked


def transient_only(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a failed stage only when its error may heal (`is_transient`)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify, never swallow: the state stays failed
        return is_transient(exc)
    return False


def configured(task: Task, params: Params, layout: Layout, arch: str | None = None) -> Task:
    """`task` with the retries and timeout that params.orchestration sets for its stage."""
    stage = task.name
    orch = params.orchestration
    return task.with_options(
        retries=orch.retries,
        retry_delay_seconds=[orch.retry_delay_seconds * 2**i for i in range(max(orch.retries, 1))],
        retry_condition_fn=transient_only,
        timeout_seconds=orch.timeout_seconds.get(stage),
        task_run_name=f"{stage}-{arch}" if arch else stage,  # "train-lenet5" in the UI and the client
        log_prints=True,  # the per-epoch lines of training show up in the Prefect UI's logs
    )


def call(task: Task, params: Params, layout: Layout, *args: Any) -> Any:
    """Run a stage in the flow, configured, and return its summary (a Cached stage's too: called
    directly, Prefect hands back the state a task returned, not its data)."""
    return configured(task, params, layout)(params, layout, *args, return_state=True).result()


def failure_reason(state: State) -> str:
    """The one line a user reads for a failed stage: a UserError's own message, else type and message."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, UserError):
        return str(exc).splitlines()[0]
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return state.message or state.name


def task_runner(params: Params) -> Any:
    """The runner that fans train/evaluate out over architectures."""
    orch = params.orchestration
    if orch.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if orch.dask_address:
            return DaskTaskRunner(address=orch.dask_address)
        # One architecture per single-threaded worker process; torch would oversubscribe otherwise.
        # With GPUs: one worker per GPU (at most max_workers), each pinned to its own by tasks.dask_worker.
        import torch

        gpus = torch.cuda.device_count()
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": min(orch.max_workers, gpus) if gpus else orch.max_workers,
                "threads_per_worker": 1,
                "processes": True,
                # A file path, not a module name: importable whatever the worker's sys.path.
                "preload": [str(Path(__file__).with_name("dask_worker.py"))],
            }
        )
    workers = orch.max_workers if orch.task_runner == "threads" else 1
    return ThreadPoolTaskRunner(max_workers=workers)


def mlflow_runs_artifact(params: Params, layout: Layout, parent_run_id: str) -> str:
    """A Prefect artifact pointing at this run's MLflow runs: the parent and one child per architecture.

    With an MLflow server (http/https) it is a link artifact to the parent run in the MLflow UI plus a
    markdown table of links; with a local store (no UI URL to link to) a markdown table of run ids.
    Returns the artifact's key.
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from tasks import tracking

    uri = tracking.tracking_uri(params).rstrip("/")
    experiment = tracking.experiment_id(params)
    served = uri.startswith(("http://", "https://"))
    runs = [("pipeline (parent)", parent_run_id)] + [
        (arch, tracking.arch_run_id(layout, arch)) for arch in params.train.architectures
    ]

    def cell(run_id: str | None) -> str:
        if run_id is None:
            return "—"
        return f"[{run_id}]({uri}/#/experiments/{experiment}/runs/{run_id})" if served else f"`{run_id}`"

    table = "\n".join(f"| {name} | {cell(run_id)} |" for name, run_id in runs)
    where = f"MLflow at `{uri}`, experiment `{params.mlflow.experiment}` (id {experiment})"
    if not served:
        where += f"; browse with `mlflow ui --backend-store-uri {uri}`"
    markdown = f"## MLflow runs\n\n{where}\n\n| run | MLflow run id |\n| --- | --- |\n{table}\n"
    if served:
        create_link_artifact(
            key="mlflow-parent-run",
            link=f"{uri}/#/experiments/{experiment}/runs/{parent_run_id}",
            link_text="MLflow: the pipeline run and its per-architecture child runs",
        )
    create_markdown_artifact(markdown, key="mlflow-runs", description="the MLflow runs of this flow run")
    return "mlflow-runs"


def validation_artifact(layout: Layout, summary: dict) -> str:
    """The validation summary as a markdown artifact of the flow run; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.files import read_json

    rows = "\n".join(
        f"| {name} | {check['severity']} | {'pass' if check['success'] else 'FAIL'} | {check['why']} |"
        for name, check in read_json(layout.validation / "result.json")["checks"].items()
    )
    create_markdown_artifact(
        f"## Data validation: {'passed' if summary['success'] else 'FAILED'}\n\n"
        f"{summary['passed']} of {summary['expectations']} expectations met, {summary['warnings']} warnings.\n\n"
        f"| check | severity | result | why |\n| --- | --- | --- | --- |\n{rows}\n",
        key="validation-summary",
    )
    return "validation-summary"


def leaderboard_artifact(rows: list[dict]) -> str:
    """The leaderboard as a table artifact of the flow run; returns its key."""
    from prefect.artifacts import create_table_artifact

    from tasks.leaderboard import COLUMNS, cell

    create_table_artifact(key="leaderboard", table=[{c: cell(c, r.get(c)) for c in COLUMNS} for r in rows],
                          description="zooflow leaderboard: sorted by val accuracy")
    return "leaderboard"


def explanations_artifact(params: Params, layout: Layout, rows: list[dict]) -> str | None:
    """What the leaderboard's best `explain.top_models` single models see, as a markdown artifact: per model
    the headline of its explain.json and its pictures, shown inline from an MLflow server (its
    `get-artifact` endpoint) or, with a local store, named by file and by MLflow artifact URI. Returns its
    key, or None when no model has current explanations."""
    from prefect.artifacts import create_markdown_artifact

    from tasks import tracking
    from tasks.files import read_json

    uri = tracking.tracking_uri(params).rstrip("/")
    served = tracking.is_server(params)
    top = [r for r in rows if r.get("family") != "ensemble" and r.get("val_acc") is not None
           and caching.is_current("explain", params, layout, r["arch"])][: params.explain.top_models]
    if not top:
        return None
    parts = ["## What the top models see", "",
             "Grad-CAM or attention rollout and occlusion on a fixed draw of images, the effective receptive field, "
             "the most confident mistakes (`outputs/explain/<arch>/`, and `explain/` in each model's MLflow run)."]
    for row in top:
        arch = row["arch"]
        report = read_json(layout.explain(arch) / "explain.json")
        made, run_id = report["made"], tracking.arch_run_id(layout, arch)
        mist = made["mistakes"]
        pairs = ", ".join(f"{p['true']}→{p['predicted']} ({p['count']})" for p in report["confused_pairs"][:3])
        parts += ["", f"### {row['rank']}. {arch}: val {100 * row['val_acc']:.2f} %", "",
                  f"- {mist['errors']} of {mist['n']} {report['split']} images wrong" + (f"; most confused: {pairs}"
                                                                                        if pairs else "")]
        if "gradcam" in made:
            parts.append(f"- Grad-CAM at `{made['gradcam']['layer']}`")
        if "attention" in made:
            parts.append(f"- attention rollout: {made['attention']['what']}")
        if "receptive_field" in made:
            rf = made["receptive_field"]
            parts.append(f"- effective receptive field: half of the gradient within the centred "
                         f"{rf['side_50']}x{rf['side_50']} of {rf['image_size']}x{rf['image_size']} pixels, 90 % within "
                         f"{rf['side_90']}x{rf['side_90']}")
        for what, why in report["skipped"].items():
            parts.append(f"- no {what.replace('_', ' ')}: {why}")
        parts.append("")
        for what in made.values():
            name = what["file"]
            if served and run_id:
                parts.append(f"![{arch} {name}]({uri}/get-artifact?path=explain/{name}&run_uuid={run_id})")
            else:
                where = f" (`runs:/{run_id}/explain/{name}`)" if run_id else ""
                parts.append(f"- `{(layout.explain(arch) / name).relative_to(layout.root)}`{where}")
    create_markdown_artifact("\n".join(parts) + "\n", key="explanations",
                             description="what the leaderboard's top models see")
    return "explanations"


# --------------------------------------------------------------------------- failure notification

FAILED = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut")
FAILURE_AUTOMATION = "zoo-pipeline failed"


def failure_notification(webhook_url: str, flow_name: str = "zoo-pipeline") -> dict:
    """Prefect's own mechanism for "tell me when the nightly fails": a notification block (a webhook that
    receives a JSON `{"subject": ..., "body": ...}` POST) and an automation whose event trigger is a
    `flow_name` run ending Failed, Crashed or TimedOut. Made again (replaced) when it exists.

    Needs a Prefect server (PREFECT_API_URL): automations run there, not in the ephemeral API."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name=FAILURE_AUTOMATION, url=webhook_url, method="POST",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block_id = block.save("zooflow-failure-webhook", overwrite=True)
    try:
        Automation.read(name=FAILURE_AUTOMATION).delete()
    except ValueError:  # not there yet
        pass
    automation = Automation(
        name=FAILURE_AUTOMATION,
        description=f"a {flow_name} flow run ended Failed, Crashed or TimedOut: POST to the zooflow webhook",
        trigger=EventTrigger(
            expect=set(FAILED),
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
            posture=Posture.Reactive,
            threshold=1,
            within=0,
        ),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="zooflow: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
            body="{{ flow.name }} run {{ flow_run.name }} (deployment {{ deployment.name }}) ended "
                 "{{ flow_run.state.name }}: {{ flow_run.state.message }}. {{ flow_run|ui_url }}",
        )],
    ).create()
    return {"automation": automation.name, "id": str(automation.id), "webhook": webhook_url,
            "block": "custom-webhook/zooflow-failure-webhook", "events": list(FAILED), "flow": flow_name}


def experiment_artifact(result: dict, parent_run_id: str) -> str:
    """An experiment's verdict table as a markdown artifact of the flow run; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    from tasks import evidence

    key = f"experiment-{result['name'].replace('_', '-')}"
    create_markdown_artifact(
        f"## {result['title']}: {result['verdict']}\n\n{result['claim']}\n\n" + "\n".join(evidence.check_rows(result))
        + f"\n\n{evidence.provenance(result)}\n\nPlot and verdict: `outputs/experiments/{result['name']}/` "
          f"(`{result['plot']}`, `verdict.md`); MLflow run `{parent_run_id}` (experiment `zooflow-lab`).\n",
        key=key, description=f"zooflow experiment {result['name']}: the verdict")
    return key
