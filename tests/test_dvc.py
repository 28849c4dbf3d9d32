"""`dvc repro` for real, in a temporary git repository holding a copy of the project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline import zoo_pipeline
from tests.conftest import REPO

# One architecture: each stage of `dvc repro` is a process (about 15 s of imports), and a second
# architecture adds three stages to each of the two repros without a path the first does not take.
SMALL = {"train": {"architectures": ["lenet5"], "epochs": 2}, "data": {"limit_per_class": 60}}


def run(*cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd)}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def small_params(path: Path) -> None:
    params = yaml.safe_load(path.read_text())
    for section, values in SMALL.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    """The tracked files of the project, committed to a fresh git repo, with a small zoo."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    small_params(repo / "params.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    run("git", "init", "-q", cwd=repo)
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", "--allow-empty", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project", cwd=repo)
    return repo


@pytest.mark.slow
def test_dvc_repro_matches_the_flow_and_reruns_only_what_changed(dvc_repo, tmp_path, monkeypatch, prefect_harness):
    repro = run("dvc", "repro", cwd=dvc_repo)
    # Each stage says in one line what it made (no JSON summaries): the stages' lines, DVC's own, no more.
    assert "evaluate lenet5: val accuracy" in repro.stdout and "register: digits-classifier version 1" in repro.stdout
    assert not [line for line in repro.stdout.splitlines() if line.strip().startswith(("{", "}", '"'))]
    assert len(repro.stdout.splitlines()) < 120, repro.stdout
    dvc_metrics = {a: json.loads((dvc_repo / f"outputs/eval/{a}/metrics.json").read_text())
                   for a in SMALL["train"]["architectures"]}
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=dvc_repo).stdout)
    assert shown, "dvc metrics show lists the declared metrics"
    assert (dvc_repo / "outputs/explain/lenet5/gradcam.png").exists()  # explain@lenet5 ran after evaluate@lenet5
    plots = json.loads(run("dvc", "plots", "show", "--json", cwd=dvc_repo).stdout)  # {"data": {name: ...}, "errors"}
    assert {"outputs/eval/lenet5/plots/confusion_test.png", "outputs/leaderboard/leaderboard.json",
            "outputs/leaderboard/curves.png", "outputs/leaderboard/accuracy_vs_params.png"} <= set(plots["data"]), set(plots["data"])
    assert not plots.get("errors")

    # The same params through the Prefect flow, in another folder: the same numbers.
    flow_dir = tmp_path / "flow"
    flow_dir.mkdir()
    shutil.copy(dvc_repo / "params.yaml", flow_dir / "params.yaml")
    monkeypatch.chdir(flow_dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{flow_dir / 'mlflow.db'}")
    zoo_pipeline(params_file="params.yaml")
    for arch, metrics in dvc_metrics.items():
        flow_metrics = json.loads((flow_dir / f"outputs/eval/{arch}/metrics.json").read_text())
        for split in ("val", "test"):
            assert flow_metrics[split]["accuracy"] == metrics[split]["accuracy"], (arch, split)
            assert flow_metrics[split]["nll"] == pytest.approx(metrics[split]["nll"], rel=1e-6), (arch, split)

    # Nothing changed: nothing to do. Only train.epochs changed: ingest and validate stay cached.
    # (the model pipeline: experiments/dvc.yaml, the lab's, has not run here)
    assert "up to date" in run("dvc", "status", "dvc.yaml", cwd=dvc_repo).stdout
    run("dvc", "exp", "run", "--dry", "-S", "train.epochs=3", cwd=dvc_repo, check=False)
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = set(json.loads(run("dvc", "status", "--json", cwd=dvc_repo).stdout))
    assert "train@lenet5" in stale
    assert not stale & {"ingest", "validate", "augment"}

    # The metrics travel with the commits (dvc.lock + the cache): `dvc metrics diff` across two commits.
    commit("2 epochs", dvc_repo)
    run("dvc", "repro", cwd=dvc_repo)
    commit("3 epochs", dvc_repo)
    diff = json.loads(run("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=dvc_repo).stdout)
    lenet = diff["outputs/eval/lenet5/metrics.json"]
    after = json.loads((dvc_repo / "outputs/eval/lenet5/metrics.json").read_text())
    assert lenet["val.nll"]["old"] == pytest.approx(dvc_metrics["lenet5"]["val"]["nll"])
    assert lenet["val.nll"]["new"] == pytest.approx(after["val"]["nll"]) and lenet["val.nll"]["diff"] != 0
    # every commit's metrics, read back from the cache (`-A`: keyed by commit sha)
    by_commit = json.loads(run("dvc", "metrics", "show", "--json", "-A", cwd=dvc_repo).stdout)
    for rev in ("HEAD", "HEAD~1"):
        sha = run("git", "rev-parse", rev, cwd=dvc_repo).stdout.strip()
        assert "outputs/ensemble/metrics.json" in by_commit[sha]["data"], by_commit[sha]
    table = json.loads(run("dvc", "exp", "show", "--json", cwd=dvc_repo).stdout)
    head = next(row for row in table if row["rev"] == "workspace")["data"]["metrics"]
    assert head["outputs/eval/lenet5/metrics.json"]["data"]["val"]["nll"] == pytest.approx(after["val"]["nll"])

    params["data"]["image_size"] = 28
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "ingest" in set(json.loads(run("dvc", "status", "--json", cwd=dvc_repo).stdout))


def commit(message: str, repo: Path) -> None:
    run("git", "add", "-A", cwd=repo)
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, cwd=repo)
