"""`zooflow train --arch lenet5 --nproc 2`: DDP over torchrun with gloo on two CPU processes. A run is
SIGKILLed (all of its processes) after its first checkpoint, re-run, and resumes from that checkpoint;
only rank 0 writes files and logs to MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tasks.augment import augment
from tasks.ingest import ingest
from tasks.layout import Layout
from tasks.params import load_params

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.limit_per_class=40", "validate.min_per_class=2", "train.epochs=3", "train.batch_size=16"]

# Loaded at start-up by every process of the first run (launcher and ranks): rank 0 stalls right after
# its first checkpoint, so the test can kill the run at a known point.
STALL = textwrap.dedent(
    """
    import os, sys, time
    if os.environ.get("ZOOFLOW_TEST_STALL") and os.environ.get("RANK") == "0":
        import tasks.engine as engine
        real = engine.save_checkpoint

        def stall(path, state):
            real(path, state)
            print("CHECKPOINT", state["epoch"], flush=True)
            time.sleep(600)

        engine.save_checkpoint = stall
    """
)


def cli_env(project: Path, hook: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (hook, REPO) if p), OMP_NUM_THREADS="1")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env.pop("ZOOFLOW_TEST_STALL", None)
    return env


def train_cmd() -> list[str]:
    cmd = [sys.executable, "-m", "flows.cli", "train", "--arch", "lenet5", "--nproc", "2", "--json"]
    for override in SMALL:
        cmd += ["-S", override]
    return cmd


def ranks_alive(project: Path) -> list[int]:
    """Processes of this test's training run: a `flows.cli` working in `project`, not pytest itself."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") == str(project.resolve()) and b"flows.cli" in (entry / "cmdline").read_bytes():
                alive.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return alive


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_gloo_two_processes_trains_and_resumes(project, tmp_path):
    params = load_params("params.yaml", SMALL)
    ingest(params, Layout())
    augment(params, Layout())
    out = project / "outputs" / "train" / "lenet5"

    # 1. Two ranks train; rank 0 stalls after its first checkpoint and the whole run is killed.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL)
    env = cli_env(project, hook) | {"ZOOFLOW_TEST_STALL": "1"}
    proc = subprocess.Popen(train_cmd(), cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 400
        while not any(line.startswith("CHECKPOINT") for line in seen):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the run ended before its first checkpoint:\n" + "".join(seen[-40:])
            assert time.monotonic() < deadline, "no checkpoint in time:\n" + "".join(seen[-40:])
            seen.append(line)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    # torchrun died outright; its ranks (each in a session of its own) must not outlive it.
    deadline = time.monotonic() + 30
    while (orphans := ranks_alive(project)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"ranks outlived the killed torchrun: {orphans}"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    assert not (out / "train.json").exists()

    # 2. The same command again: resumes after epoch 1 and finishes, on two ranks.
    done = subprocess.run(train_cmd(), cwd=project, env=cli_env(project), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["world_size"] == 2
    assert summary["resumed_from_epoch"] == 1
    assert summary["epochs_run"] == 3

    # The checkpoint format is the single-process one: a plain state_dict of the unwrapped model.
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and not any(k.startswith("module.") for k in ckpt["model"])
    state = torch.load(out / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert json.loads((out / "train.json").read_text())["epochs_run"] == 3

    # MLflow: rank 0 only. The resumed run carries each epoch's metrics exactly once.
    store = cli_env(project)["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    history = client.get_metric_history(summary["run_id"], "val_acc")
    assert sorted(m.step for m in history) == [0, 1, 2]
    experiment = client.get_experiment_by_name("zooflow").experiment_id
    assert len(client.search_runs([experiment], "tags.`zooflow.arch` = 'lenet5'")) == 2  # killed + resumed
