"""How the pipeline runs under Prefect, with real flow and task runs (Prefect's test harness, MLflow in
a sqlite file of the project): caching by real inputs, retries only on transient errors, isolation of a
failing architecture, and the Dask task runner giving the sequential leaderboard."""

from __future__ import annotations

import errno
import json
import os
import re
import pickle
import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

from flows.pipeline import zoo_pipeline
from tasks.errors import DataError, ParamsError
from tasks.layout import Layout
from tasks.orchestration import configured
from tasks.params import load_params

TINY = [
    "data.limit_per_class=30",
    "validate.min_per_class=2",
    "train.epochs=1",
    "orchestration.retries=0",
]


def run_pipeline(overrides: list[str]):
    """The flow's final state and {task run name: state name} of every task run it made (subflows too)."""
    state = zoo_pipeline(params_file="params.yaml", overrides=TINY + overrides, return_state=True)
    assert state.is_final()
    return state, task_states(state.state_details.flow_run_id)


def task_states(flow_run_id, settle_seconds: float = 60) -> dict[str, str]:
    """{task run name: state name} as the Prefect API shows them, once none is still running.

    Task runs report their states to the API as events, recorded asynchronously: right after the flow
    returns, the API may still show a finished task as Running or Retrying. (A task whose upstream
    failed stays Pending for good, so that is not waited on.)"""
    deadline = time.monotonic() + settle_seconds
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(f.id for f in subflows)]
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            settled = all(run.state is not None and not run.state.is_running() and not run.state.is_scheduled() for run in runs)
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    return {run.name: run.state.name for run in runs if run.state is not None}


# --------------------------------------------------------------------------- caching


@pytest.mark.slow
def test_each_run_reports_its_own_numbers_and_reuses_only_its_own_outputs(project, prefect_harness):
    """epochs 2 -> 1 -> 2 in one folder: the third run re-trains (the outputs on disk are the second's)
    and reports exactly the first run's numbers; a fourth, identical run is Cached everywhere and
    registers nothing new; outputs deleted behind its back are made again. No Prefect result record
    is written, so none can be read (or unpickled)."""
    results = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    before = set(results.rglob("*"))
    marker = project / "pwned"  # a planted pickle that would write this file if anything unpickled it
    (results / "zooflow-train-linear-planted").write_bytes(pickle.dumps(Plant(str(marker))))
    archs = ["train.architectures=[knn, linear]", "train.overrides={linear: {epochs: 2}}"]

    def board(state):
        return {r["arch"]: (r["val_acc"], r["test_acc"], r["status"]) for r in state.result()["leaderboard"]}

    first, states = run_pipeline(archs)
    assert first.is_completed() and states["train-linear"] == "Completed"
    second, states = run_pipeline(["train.architectures=[knn, linear]", "train.overrides={linear: {epochs: 1}}"])
    assert states["train-linear"] == "Completed" and states["train-knn"] == "Cached"
    assert states["ingest"] == states["validate"] == states["augment"] == "Cached"
    assert board(second)["linear"] != board(first)["linear"]

    third, states = run_pipeline(archs)
    assert states["train-linear"] == "Completed" and states["evaluate-linear"] == "Completed"
    assert board(third)["linear"] == board(first)["linear"]
    history = (project / "outputs" / "train" / "linear" / "history.json").read_text()
    assert '"epoch": 1' in history  # two epochs: the files are this run's

    fourth, states = run_pipeline(archs)
    assert all(states[name] == "Cached" for name in ("ingest", "validate", "augment", "train-knn", "train-linear",
                                                      "evaluate-knn", "evaluate-linear", "explain-knn",
                                                      "explain-linear")), states
    assert board(fourth) == board(first)
    registered = fourth.result()["registered"]
    assert registered["new"] is False and registered["version"] == third.result()["registered"]["version"]

    shutil.rmtree(project / "outputs" / "train" / "knn")
    fifth, states = run_pipeline(archs)
    assert states["train-knn"] == "Completed" and states["train-linear"] == "Cached"
    assert states["explain-knn"] == "Completed" and states["explain-linear"] == "Cached"  # a new model, new pictures
    assert board(fifth) == board(first)
    assert set(results.rglob("*")) - before == {results / "zooflow-train-linear-planted"}
    assert not marker.exists()


class Plant:
    """Unpickling this writes a file: what a planted cache record could do to a reader that unpickles."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("code ran",))


# --------------------------------------------------------------------------- retries


ATTEMPTS: dict[str, int] = {}


@task(name="augment")  # a stage's name: orchestration.timeout_seconds refuses names that are no stage
def flaky(params, layout, kind: str, fail_times: int) -> str:
    ATTEMPTS[kind] = ATTEMPTS.get(kind, 0) + 1
    if ATTEMPTS[kind] <= fail_times:
        if kind == "params":
            raise ParamsError("train.batch_size: must be positive")
        if kind == "data":
            raise DataError("data/prepared/meta.json: unreadable")
        if kind == "bug":
            raise TypeError("build() got an unexpected keyword argument 'foo'")
        if kind == "disk":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise OSError("NFS hiccup: stale file handle")  # transient
    return "ok"


@flow
def retrying(kind: str, fail_times: int):
    params = load_params("params.yaml", ["orchestration.retries=2", "orchestration.retry_delay_seconds=0"])
    return configured(flaky, params, Layout()).submit(params, Layout(), kind, fail_times).wait()


@pytest.mark.parametrize(
    "kind, fail_times, attempts, final",
    [
        ("params", 5, 1, "Failed"),  # a user error never heals: no retry
        ("data", 5, 1, "Failed"),
        ("bug", 5, 1, "Failed"),  # a programming error fails the same way every time
        ("disk", 5, 1, "Failed"),  # a full disk does not empty itself
        ("transient", 1, 2, "Completed"),  # one retry and it works
        ("transient", 5, 3, "Failed"),  # retries=2: three attempts, then give up
    ],
)
def test_retries_only_transient_errors(project, prefect_harness, kind, fail_times, attempts, final):
    ATTEMPTS.clear()
    state = retrying(kind, fail_times, return_state=True)
    states = task_states(state.state_details.flow_run_id)
    assert ATTEMPTS[kind] == attempts
    assert states["augment"] == final


def test_backoff_doubles_and_stage_timeouts_come_from_params(project):
    params = load_params("params.yaml", ["orchestration.retries=3", "orchestration.retry_delay_seconds=5",
                                         "orchestration.timeout_seconds={augment: 90}"])
    configured_task = configured(flaky, params, Layout())  # the policies of the stage it is named after
    assert configured_task.retries == 3
    assert configured_task.retry_delay_seconds == [5, 10, 20]
    assert configured_task.timeout_seconds == 90


@task(name="evaluate")
def sleepy(params, layout) -> str:
    import time

    for _ in range(300):  # 30 s, in steps the timeout can interrupt
        time.sleep(0.1)
    return "woke"


@flow
def sleeping():
    params = load_params("params.yaml", ["orchestration.retries=0", "orchestration.timeout_seconds={evaluate: 2}"])
    return configured(sleepy, params, Layout()).submit(params, Layout()).wait()


def test_a_stage_past_its_timeout_fails(project, prefect_harness):
    state = sleeping(return_state=True)
    assert task_states(state.state_details.flow_run_id)["evaluate"] == "TimedOut"


# --------------------------------------------------------------------------- isolation


@pytest.mark.slow
def test_failing_architecture_leaves_the_others_trained_and_registered(project, prefect_harness):
    # lenet5 is built with an option its builder refuses: that architecture fails, the others must not.
    # lenet5: an optimiser implementation torch refuses when training starts (a TypeError: never
    # retried); mlp: a learning rate that diverges (a failure, never a model). knn and linear must not
    # be touched by either.
    broken = ["train.architectures=[knn, lenet5, mlp, linear]",
              "train.overrides={lenet5: {optimizer: {name: adadelta, implementation: fused}}, "
              "mlp: {optimizer: {lr: 1000}}}", "orchestration.retries=2", "orchestration.retry_delay_seconds=0",
              "explain.enabled=false"]  # no pictures: the stage is skipped, and the card says so
    state, states = run_pipeline(broken + ["orchestration.fail_fast=true"])
    assert state.is_failed()
    assert "lenet5" in state.message and "mlp" in state.message and "nothing registered" in state.message
    assert states["train-lenet5"] == states["train-mlp"] == "Failed"
    assert states["train-knn"] == states["train-linear"] == "Completed"
    assert "register" not in states and "promote" not in states  # a failed run registers and promotes nothing
    assert run_counts(state.state_details.flow_run_id, ["train-lenet5", "train-mlp"]) == [1, 1]
    assert subflow_state(state.state_details.flow_run_id) == "Failed"

    rows = {row["arch"]: row for row in load_leaderboard(project)}
    assert rows["lenet5"]["status"].startswith("failed: TypeError") and "fused" in rows["lenet5"]["status"]
    assert re.fullmatch(r"failed: diverged at epoch 1 \((val )?loss(, at its best epoch)? (nan|inf|[0-9.]+e\+[0-9]+)\)", rows["mlp"]["status"])
    assert rows["mlp"]["val_acc"] == rows["lenet5"]["val_acc"] == ""  # no numbers from a failure, stale or new
    assert rows["knn"]["status"] == rows["linear"]["status"] == "ok"
    client = MlflowClient()
    assert client.search_registered_models() == []

    # fail_fast false: the same failures are reported, the best of the others is registered.
    state, states = run_pipeline(broken + ["orchestration.fail_fast=false"])
    assert state.is_completed()
    assert states["train-lenet5"] == states["train-mlp"] == "Failed" and states["train-knn"] == "Cached"
    assert not [name for name in states if name.startswith("explain")] and not (project / "outputs" / "explain").exists()
    summary = state.result()
    assert set(summary["failed"]) == {"lenet5", "mlp"}
    members = json.loads((project / "outputs" / "ensemble" / "members.json").read_text())["member_keys"]
    assert set(members) == {"knn", "linear"}
    version = client.get_model_version_by_alias("digits-classifier", "challenger")
    assert str(version.version) == summary["registered"]["version"]
    assert {m.split(":")[0] for m in version.tags["zooflow.members"].split(",")} <= {"knn", "linear"}
    assert "no pictures from this run's inputs (explain.enabled: false" in version.description
    runs = client.search_runs([client.get_experiment_by_name("zooflow").experiment_id])
    status = {}
    for run in runs:
        status.setdefault(run.data.tags.get("zooflow.arch", run.info.run_name), set()).add(run.info.status)
    assert status["lenet5"] == status["mlp"] == {"FAILED"}
    assert "RUNNING" not in set().union(*status.values())


def run_counts(flow_run_id, names: list[str]) -> list[int]:
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[f.id for f in subflows])))
    by_name = {run.name: run.run_count for run in runs}
    return [by_name[name] for name in names]


def subflow_state(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        (zoo,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    return zoo.state.name


def load_leaderboard(project):
    import csv

    with open(project / "outputs" / "leaderboard" / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- Dask


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dask_runner_gives_the_sequential_leaderboard(project, prefect_harness, tmp_path):
    archs = ["train.architectures=[knn, lenet5]", "orchestration.cache=false"]
    state, _ = run_pipeline(archs)
    assert state.is_completed()
    sequential = {r["arch"]: r for r in state.result()["leaderboard"] if r["arch"] in ("knn", "lenet5")}

    shutil.rmtree(project / "outputs")
    state, states = run_pipeline(archs + ["orchestration.task_runner=dask", "orchestration.max_workers=2"])
    assert state.is_completed(), state.message
    assert states["train-lenet5"] == states["train-knn"] == "Completed"
    dask = {r["arch"]: r for r in state.result()["leaderboard"] if r["arch"] in ("knn", "lenet5")}

    assert set(dask) == set(sequential) == {"knn", "lenet5"}
    for arch in sequential:
        assert dask[arch]["val_acc"] == sequential[arch]["val_acc"], arch
        assert dask[arch]["test_acc"] == sequential[arch]["test_acc"], arch
        assert dask[arch]["val_nll"] == pytest.approx(sequential[arch]["val_nll"], rel=1e-6), arch  # same weights
    # The workers ran this checkout's code (not another install of zooflow on the machine).
    assert (project / "outputs" / "eval" / "lenet5" / "metrics.json").exists()
    # The workers wrote into the project (absolute Layout) and logged to the same MLflow store.
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("zooflow").experiment_id], "tags.`zooflow.arch` = 'lenet5'"
    )
    assert len(runs) == 2


# --------------------------------------------------------------------------- observability


def test_mlflow_runs_artifact_links_into_an_mlflow_server(project, prefect_harness, monkeypatch):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks import orchestration, tracking
    from tasks.files import write_json

    monkeypatch.setattr(tracking, "tracking_uri", lambda params: "https://mlflow.example.org/")
    monkeypatch.setattr(tracking, "experiment_id", lambda params: "7")
    params = load_params("params.yaml", ["train.architectures=[knn, lenet5]"])
    write_json(project / "outputs" / "runs" / "knn.json", {"run_id": "knnrun", "parent_run_id": "parent"})

    @flow
    def publish():
        return orchestration.mlflow_runs_artifact(params, Layout(), "parent")

    state = publish(return_state=True)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    # Prefect stores a link artifact as markdown: [text](link).
    assert "](https://mlflow.example.org/#/experiments/7/runs/parent)" in by_key["mlflow-parent-run"].data
    table = by_key["mlflow-runs"].data
    assert "[knnrun](https://mlflow.example.org/#/experiments/7/runs/knnrun)" in table
    assert "| lenet5 | — |" in table  # not trained (yet): no run
