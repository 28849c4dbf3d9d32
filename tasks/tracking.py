"""MLflow in one place: where the tracking store is, the pipeline's parent run and one child run per
architecture. Everything goes through `MlflowClient` with explicit run ids, so stages running in
threads or in separate processes (`dvc repro`) never share a fluent "active run"."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from tasks.errors import UserError
from tasks.files import read_json, write_json
from tasks.layout import Layout
from tasks.params import Params

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACTS = "./mlartifacts"


def tracking_uri(params: Params) -> str:
    return params.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def is_server(params: Params) -> bool:
    return tracking_uri(params).startswith(("http://", "https://"))


def check_server(params: Params) -> None:
    """In server mode: that the tracking server answers `/health`, asked a few times within seconds.

    Raises UserError naming the URI. Sets MLflow's own HTTP retries and timeout from `params.mlflow` for
    the requests that follow (a server that goes away mid-run is retried, with backoff)."""
    import time
    import urllib.error
    import urllib.request

    if not is_server(params):
        return
    uri = tracking_uri(params)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(params.mlflow.http_retries)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(params.mlflow.http_timeout)
    last: Exception | None = None
    for attempt in range(min(params.mlflow.http_retries, 2) + 1):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=min(10, params.mlflow.http_timeout)) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                break
        time.sleep(min(2**attempt, 4))
    reason = getattr(last, "reason", last)
    raise UserError(f"MLflow server at {uri} is not reachable ({reason}); start it "
                    f"(`mlflow server --host 127.0.0.1 --port PORT`) or unset MLFLOW_TRACKING_URI")


def client(params: Params) -> MlflowClient:
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(params: Params) -> str:
    c = client(params)
    exp = c.get_experiment_by_name(params.mlflow.experiment)
    if exp is not None:
        return exp.experiment_id
    # A local store keeps artifacts beside the project, not in ./mlruns of wherever we run.
    location = None
    if tracking_uri(params).startswith("sqlite:"):
        location = Path(DEFAULT_ARTIFACTS).resolve().as_uri()
    # MLflow 3's UI shows a "custom model development" experiment with its runs, not its GenAI pages.
    return c.create_experiment(params.mlflow.experiment, artifact_location=location,
                               tags={"mlflow.experimentKind": "custom_model_development"})


def start_run(params: Params, name: str, parent_run_id: str | None = None, tags: dict | None = None) -> str:
    all_tags = {"mlflow.runName": name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(params).create_run(experiment_id(params), tags=all_tags)
    return run.info.run_id


def end_run(params: Params, run_id: str, status: str = "FINISHED") -> None:
    client(params).set_terminated(run_id, status=status)


@contextlib.contextmanager
def ending(params: Params, run_id: str) -> Iterator[None]:
    """End run `run_id` however the block ends: FINISHED, FAILED on an error, KILLED on an interrupt."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        _end_quietly(params, run_id, "KILLED")
        raise
    except BaseException:
        _end_quietly(params, run_id, "FAILED")
        raise
    end_run(params, run_id, "FINISHED")


def _end_quietly(params: Params, run_id: str, status: str) -> None:
    try:
        end_run(params, run_id, status)
    except Exception as exc:  # noqa: BLE001 - the error that ended the block is the one to report
        print(f"warning: MLflow run {run_id} could not be marked {status}: {exc}", file=sys.stderr)


def new_arch_run(params: Params, layout: Layout, arch: str, parent_run_id: str | None = None) -> str:
    """Open the architecture's run (a child of the pipeline's run, when there is one).

    Its id is kept beside the training outputs so the evaluate stage, even in another process
    (`dvc repro`), logs to the same run.
    """
    run_id = start_run(params, arch, parent_run_id, tags={"zooflow.arch": arch})
    write_json(_run_file(layout, arch), {"run_id": run_id, "parent_run_id": parent_run_id})
    return run_id


def arch_run_id(layout: Layout, arch: str) -> str | None:
    """The run that training of `arch` logged to, if any."""
    path = _run_file(layout, arch)
    return read_json(path)["run_id"] if path.exists() else None


def _run_file(layout: Layout, arch: str) -> Path:
    return layout.root / "outputs" / "runs" / f"{arch}.json"


def log_params(params: Params, run_id: str, values: dict[str, Any]) -> None:
    flat = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in _flatten(values).items()]
    for start in range(0, len(flat), 100):  # MLflow takes at most 100 params per request
        client(params).log_batch(run_id, params=flat[start:start + 100])


def set_tags(params: Params, run_id: str, tags: dict[str, str]) -> None:
    client(params).log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def log_metrics(params: Params, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time

    now = int(time.time() * 1000)
    entries = [
        mlflow.entities.Metric(k, float(v), now, step or 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    ]
    if entries:
        client(params).log_batch(run_id, metrics=entries)


def metric_logger(params: Params, run_id: str) -> Callable[[dict[str, float], int], None]:
    """A `log(metrics, step)` callback for the training loop."""
    return lambda metrics, step: log_metrics(params, run_id, metrics, step)


def log_artifact(params: Params, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client(params).log_artifact(run_id, str(path), artifact_path)


def log_pipeline_results(params: Params, layout: Layout, run_id: str, rows: list[dict]) -> None:
    """The pipeline's parent run gets what the run found: per-architecture and best val/test accuracy,
    the leaderboard (CSV, Markdown, plots) and the validation report (JSON and the offline HTML page)."""
    scored = [r for r in rows if r.get("val_acc") is not None]
    metrics = {"architectures": len(params.train.architectures),
               "failed_architectures": sum(str(r.get("status", "")).startswith("failed") for r in rows)}
    for row in scored:
        metrics[f"val_accuracy/{row['arch']}"] = row["val_acc"]
        if row.get("test_acc") is not None:
            metrics[f"test_accuracy/{row['arch']}"] = row["test_acc"]
    if scored:
        best = scored[0]  # the leaderboard's order: the registry's choice rule
        metrics.update(best_val_accuracy=best["val_acc"], best_test_accuracy=best.get("test_acc"))
    log_metrics(params, run_id, metrics)
    for path in sorted(layout.leaderboard.glob("*")):
        if path.suffix in (".csv", ".md", ".json", ".png") and path.name != "stage.json":
            log_artifact(params, run_id, path, "leaderboard")
    for name in ("result.json", "report.html"):
        if (layout.validation / name).exists():
            log_artifact(params, run_id, layout.validation / name, "validation")


def log_registered(params: Params, run_id: str, registered: dict) -> None:
    """Which model the run registered, on the parent run: tags for search, its metrics for charts."""
    client(params).log_batch(run_id, tags=[mlflow.entities.RunTag(f"zooflow.registered.{k}", str(registered[k]))
                                           for k in ("name", "version", "candidate", "new") if k in registered])
    log_metrics(params, run_id, {"registered_val_accuracy": registered.get("val_accuracy"),
                                 "registered_test_accuracy": registered.get("test_accuracy")})


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
