"""Kill and resume: a training subprocess is SIGKILLed after its second checkpoint, re-run, and ends
with exactly the weights of an uninterrupted run (CPU, deterministic, tiny model, few steps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.test_train import make_data, make_params, register_test_models
    from tasks import engine, train as tr

    register_test_models()
    data = make_data()
    if sys.argv[2] == "stall":
        real, calls = engine.save_checkpoint, []

        def stall_after_second(path, state):
            real(path, state)
            calls.append(1)
            if len(calls) == 2:
                print("CHECKPOINT 2", flush=True)
                time.sleep(600)

        engine.save_checkpoint = stall_after_second
    params = make_params(
        epochs=4,
        ema_decay=0.8,
        model_options={{"test_tiny": {{"dropout": 0.3}}}},
        optimizer={{"name": "sgd", "nesterov": True}},
        schedule={{"name": "cosine", "warmup_epochs": 1}},
    )
    params = params.model_copy(update={{"augment": params.augment.model_copy(update={{"mixup_alpha": 0.4, "cutout": 4}})}})
    summary = tr.train(params, data.layout(Path(sys.argv[1])), "test_tiny")
    print("RESUMED FROM", summary["resumed_from_epoch"], flush=True)
    """
)


def _run(script: Path, out: Path, mode: str) -> str:
    done = subprocess.run([sys.executable, str(script), str(out), mode], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(600)  # a stalled child (no line to read) must fail the test, not hang the suite
def test_killed_training_resumes_bit_identical(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))

    # 1. Killed after its second checkpoint.
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "stall"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while "CHECKPOINT 2" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the training process ended before its second checkpoint"
            assert time.monotonic() < deadline, "no second checkpoint in time"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    ckpt = killed / "outputs/train/test_tiny/checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2

    # 2. Re-run: resumes at epoch 2 and finishes.
    assert "RESUMED FROM 2" in _run(script, killed, "run")

    # 3. Uninterrupted, for comparison.
    whole = tmp_path / "whole"
    assert "RESUMED FROM None" in _run(script, whole, "run")

    a = torch.load(ckpt, weights_only=True)
    b = torch.load(whole / "outputs/train/test_tiny/checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for part in ("model",):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for k in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]), f"ema.{k} differs"
    for ma, mb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ma["momentum_buffer"], mb["momentum_buffer"])
    best_a = torch.load(killed / "outputs/train/test_tiny/model.pt", weights_only=True)
    best_b = torch.load(whole / "outputs/train/test_tiny/model.pt", weights_only=True)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert [h["val_acc"] for h in a["history"]] == [h["val_acc"] for h in b["history"]]
