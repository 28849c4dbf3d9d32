"""The README's "Running on a schedule", for real: `prefect server start`, a process work pool,
`prefect deploy --all` from prefect.yaml, `prefect worker start`, `prefect deployment run` on a tiny
config; the flow run Completes and a model version is registered. The deployments' parameters are
typed (the server refuses a bad value), and `zooflow notify` makes the automation that POSTs to a
webhook when a run fails (a real failing run, a real HTTP receiver)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

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


@contextmanager
def webhook_receiver():
    """A local HTTP endpoint that keeps the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


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
        assert set(deployments) == {"nightly", "weekly-full-zoo", "own-data", "warm-start", "lab"}
        assert deployments["warm-start"]["parameters"]["warm_start"] == "staging"
        nightly = deployments["nightly"]
        assert nightly["work_pool_name"] == "zooflow"
        assert nightly["parameters"]["params_file"] == "params.yaml"
        assert [s["schedule"]["timezone"] for s in nightly["schedules"]] == ["Europe/Berlin"]
        # The worker runs the flow in the folder the deployment was made from.
        assert nightly["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}
        ]
        # Typed parameters: the form offers the zoo, a positive epoch count, the sources; the server refuses
        # a bad value before any run exists.
        schema = nightly["parameter_openapi_schema"]["properties"]
        assert "resnet20" in schema["architectures"]["anyOf"][0]["items"]["enum"]
        assert schema["epochs"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 100000}
        assert "folder" in schema["data_source"]["anyOf"][0]["enum"] and "data_path" in schema
        assert "pattern" in schema["model_name"]["anyOf"][0] and "overrides" in schema
        assert deployments["own-data"]["parameters"]["data_source"] == "folder"
        for bad in ({"epochs": 0}, {"architectures": ["resnet21"]}, {"data_source": "imagenet"}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                api(env, f"/deployments/{nightly['id']}/create_flow_run", {"parameters": bad})
            assert refused.value.code == 409 and "Validation failed" in refused.value.read().decode(), bad

        with webhook_receiver() as (hook, received), worker(env, "zooflow", tmp_path, tmp_path / "worker.log"):
            # `zooflow notify`: Prefect's own automation, which POSTs to a webhook when a run fails. The
            # own-data deployment on a folder that is not there fails at ingest; the webhook hears of it.
            done = subprocess.run([sys.executable, "-m", "flows.cli", "notify", "--webhook", hook], cwd=project,
                                  env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and "automation 'zoo-pipeline failed'" in done.stdout, done.stderr[-2000:]
            out = cli(env, project, "deployment", "run", "zoo-pipeline/own-data", "--param", "data_path=/no/such/pets")
            failing = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
            assert wait_for_flow_run(env, failing, timeout=600)["state_type"] == "FAILED"
            deadline = time.monotonic() + 120
            while not received and time.monotonic() < deadline:
                time.sleep(1)
            assert received, "no POST to the webhook within 2 minutes of the failure"
            assert "zoo-pipeline" in received[0]["subject"] and "Failed" in received[0]["subject"]
            assert "own-data" in received[0]["body"] and "/no/such/pets" in received[0]["body"]

            out = cli(env, project, "deployment", "run", "zoo-pipeline/nightly",
                      "--params", json.dumps({"overrides": TINY}))
            run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
            run = wait_for_flow_run(env, run_id, timeout=1200, worker_log=tmp_path / "worker.log")
            assert run["state_type"] == "COMPLETED", (run["state"], (tmp_path / "worker.log").read_text()[-4000:])
            assert run["parameters"]["overrides"] == TINY

        artifacts = {a["key"]: a for a in api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}, attempts=3)}
        assert {"leaderboard", "validation-summary", "mlflow-runs", "explanations"} <= set(artifacts)

        # Training runs in the `train-zoo` subflow; its per-epoch lines are logs of the pipeline's run too.
        subflows = api(env, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}, attempts=3)
        assert [f["name"] for f in subflows] and all(f["state_type"] == "COMPLETED" for f in subflows)
        logs = api(env, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}, attempts=3)
        assert any("[train lenet5] epoch 1/1" in log["message"] for log in logs)
        assert any(log["message"].startswith("recipe: recipes.digits") for log in logs)

    store = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("digits-classifier", "challenger")
    assert int(version.version) >= 1
    assert (project / "outputs" / "leaderboard" / "leaderboard.csv").exists()
