"""The whole `zoo-pipeline` flow, for real: Prefect (test harness), MLflow (a sqlite store in the
project folder), Great Expectations, on the embedded digits dataset with a small zoo."""

import json
import re
import shutil

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.pipeline import zoo_pipeline
from tasks.readers import load_prepared

SMALL_ZOO = ["train.architectures=[knn, lenet5]", "train.epochs=4"]


@pytest.mark.slow
def test_pipeline_registers_and_promotes_a_model_that_works(project, prefect_harness):
    summary = zoo_pipeline(params_file="params.yaml", overrides=SMALL_ZOO)

    rows = {row["arch"]: row for row in summary["leaderboard"]}
    assert {"knn", "lenet5"} <= set(rows)
    assert all(row["status"] == "ok" for row in summary["leaderboard"] if row["arch"] in ("knn", "lenet5"))

    result = json.loads((project / "reports" / "validation" / "result.json").read_text())
    assert result["success"] is True

    client = MlflowClient()
    staging = client.get_model_version_by_alias("digits-classifier", "staging")
    challenger = client.get_model_version_by_alias("digits-classifier", "challenger")
    assert staging.version == challenger.version

    # Every model explained, and the registered version's card names its pictures in its MLflow run.
    for arch in ("knn", "lenet5"):
        assert json.loads((project / "outputs" / "explain" / arch / "explain.json").read_text())["made"]["mistakes"]
    assert (project / "outputs" / "explain" / "lenet5" / "gradcam.png").exists()
    card = staging.description.split("## What it sees", 1)[1].split("\n## ", 1)[0]
    for member in staging.tags["zooflow.members"].split(","):  # "lenet5:1.0000"
        arch = member.split(":")[0]
        run_id = json.loads((project / "outputs" / "runs" / f"{arch}.json").read_text())["run_id"]
        line = next(line for line in card.splitlines() if line.startswith(f"- **{arch}**"))
        named = set(re.findall(r"`(explain/[^`]+)`", line))
        logged = {a.path for a in client.list_artifacts(run_id, "explain")}
        assert run_id in line and {"explain/occlusion.png", "explain/mistakes.png"} <= named <= logged, (line, logged)
        assert client.get_run(run_id).data.tags["zooflow.explain"] == "ok"

    model = mlflow.pyfunc.load_model("models:/digits-classifier@staging")
    data = load_prepared(project / "data" / "prepared")
    images, labels = data.split("test")
    predicted = model.predict(np.asarray(images[:64]))
    accuracy = float(np.mean(np.asarray(predicted["label"]) == labels[:64]))
    assert accuracy > 0.85

    # Same data, same params: every stage is reused, the same model is chosen, and it is not registered
    # again: @challenger and @staging stay on the one version. Explanations that cannot be written this
    # time (outputs/explain is a file) fail, but no architecture: the leaderboard says so beside the
    # numbers, and the run completes.
    shutil.rmtree(project / "outputs" / "explain")
    (project / "outputs" / "explain").write_text("not a folder")
    again = zoo_pipeline(params_file="params.yaml", overrides=SMALL_ZOO)
    assert again["registered"]["new"] is False and again["registered"]["version"] == str(staging.version)
    assert "identical to version" in again["registered"]["why"]
    assert [v.version for v in client.search_model_versions("name='digits-classifier'")] == [staging.version]
    assert client.get_model_version_by_alias("digits-classifier", "staging").version == staging.version
    rows = {row["arch"]: row for row in again["leaderboard"]}
    assert again["failed"] == {}
    for arch in ("knn", "lenet5"):
        assert rows[arch]["status"].startswith("ok; explain failed: FileExistsError") and rows[arch]["val_acc"] > 0.8
        run = client.get_run(json.loads((project / "outputs" / "runs" / f"{arch}.json").read_text())["run_id"])
        assert run.data.tags["zooflow.explain"].startswith("failed:")

    # Every MLflow run the pipeline runs started was ended.
    experiment = client.get_experiment_by_name("zooflow").experiment_id
    statuses = [(r.info.run_name, r.info.status) for r in client.search_runs([experiment])]
    assert len(statuses) >= 5 and {status for _, status in statuses} == {"FINISHED"}, statuses

    # The pipeline's parent run carries the run: its params, what it found, the leaderboard and the
    # validation report; the architectures' runs are its children. MLflow 3's UI shows its runs.
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.search_runs([experiment], "tags.`mlflow.runName` = 'zoo-pipeline'", order_by=["start_time ASC"])[0]
    assert parent.data.params["train.epochs"] == "4" and parent.data.params["data.source"] == "digits"
    assert parent.data.metrics["val_accuracy/lenet5"] == rows["lenet5"]["val_acc"]
    assert parent.data.metrics["best_val_accuracy"] == summary["leaderboard"][0]["val_acc"]
    assert parent.data.metrics["registered_val_accuracy"] == summary["registered"]["val_accuracy"]
    assert parent.data.tags["zooflow.registered.version"] == str(staging.version)
    logged = {f.path for folder in ("leaderboard", "validation") for f in client.list_artifacts(parent.info.run_id, folder)}
    assert {"leaderboard/leaderboard.csv", "leaderboard/accuracy_vs_params.png", "validation/result.json",
            "validation/report.html"} <= logged
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {"knn", "lenet5"} <= {r.info.run_name for r in children}
