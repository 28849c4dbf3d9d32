"""The README's "Running on a schedule", for real: `prefect server start`, a process work pool,
`prefect deploy --all` from prefect.yaml, `prefect worker start`, `prefect deployment run` on a tiny
config; the flow run Completes and a model version is registered."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from mlflow import MlflowClient

from tests.prefect_server import api, cli, prefect_server, wait_for_flow_run, worker

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = [
    "train.architectures=[knn, lenet5]",
    "train.epochs=1",
    "data.limit_per_class=30",
    "validate.min_per_class=2",
    "orchestration.retries=0",
]


def copy_project(dest):
    """What a fresh clone holds: the code, params.yaml and prefect.yaml."""
    for name in ("flows", "tasks", "models"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "prefect.yaml"):
        shutil.copy(REPO / name, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_scheduled_deployment_runs_on_a_real_server_and_registers_a_model(tmp_path):
    project = copy_project(tmp_path / "project")
    home = tmp_path / "prefect-home"
    home.mkdir()
    with prefect_server(home, project, tmp_path / "server.log") as env:
        cli(env, project, "work-pool", "create", "zooflow", "--type", "process")
        cli(env, project, "--no-prompt", "deploy", "--all")

        deployments = {d["name"]: d for d in api(env, "/deployments/filter", {}, attempts=3)}
        assert set(deployments) == {"nightly", "weekly-full-zoo", "own-data", "warm-start"}
        assert deployments["warm-start"]["parameters"]["warm_start"] == "staging"
        nightly = deployments["nightly"]
        assert nightly["work_pool_name"] == "zooflow"
        assert nightly["parameters"]["params_file"] == "params.yaml"
        assert [s["schedule"]["timezone"] for s in nightly["schedules"]] == ["Europe/Berlin"]
        # The worker runs the flow in the folder the deployment was made from.
        assert nightly["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}
        ]

        with worker(env, "zooflow", tmp_path, tmp_path / "worker.log"):
            out = cli(env, project, "deployment", "run", "zoo-pipeline/nightly",
                      "--params", json.dumps({"overrides": TINY}))
            run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
            run = wait_for_flow_run(env, run_id, timeout=1200, worker_log=tmp_path / "worker.log")
            assert run["state_type"] == "COMPLETED", (run["state"], (tmp_path / "worker.log").read_text()[-4000:])
            assert run["parameters"]["overrides"] == TINY

        artifacts = {a["key"]: a for a in api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}, attempts=3)}
        assert {"leaderboard", "validation-summary", "mlflow-runs", "explanations"} <= set(artifacts)

        # Training runs in the `train-zoo` subflow; its per-epoch lines are Prefect logs there.
        subflows = api(env, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}, attempts=3)
        assert [f["name"] for f in subflows] and all(f["state_type"] == "COMPLETED" for f in subflows)
        ids = [run_id, *(f["id"] for f in subflows)]
        logs = api(env, "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}, "limit": 200}, attempts=3)
        assert any("[train lenet5] epoch 1/1" in log["message"] for log in logs)

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version_by_alias("digits-classifier", "challenger")
    assert int(version.version) >= 1
    assert (project / "outputs" / "leaderboard" / "leaderboard.csv").exists()
