"""bench/gpu_check.py --dry-run: every section of the GPU check runs on the CPU (tiny generated data, a
couple of steps per item) where Prefect, MLflow, Great Expectations and DVC cannot be imported, as on the
GPU machine, so the check cannot rot between GPU leases. Also Page's ResNet-9, which the check trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from tests import no_services

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.timeout(900)
def test_dry_run_runs_every_section_without_services(tmp_path):
    hook = no_services.sitecustomize(tmp_path / "hook")  # every process of the check, torchrun's rank too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=850, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = report["rows"]
    assert report["env"]["dry_run"] is True
    sections = {r["section"] for r in rows}
    assert sections == {"data", "zoo", "throughput", "time-to-94", "airbench94", "paper", "ddp", "compile"}
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r for r in rows if r["status"] not in ("ok", "skipped")]
    families = {info.family for name, info in models.available().items()
                if info.trained_by == "sgd" and not name.startswith("test_")}  # not tests/test_train.py's
    zoo = {r["item"] for r in rows if r["section"] == "zoo"}
    assert families <= zoo  # one row per family (plus the fitted baseline)
    assert all(r["finite"] for r in rows if r["section"] == "zoo" and "finite" in r)
    assert [r["status"] for r in rows if r["section"] == "airbench94"] == ["skipped"]  # CUDA-only
    ddp = next(r for r in rows if r["section"] == "ddp")
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["resumed_from_epoch"] == 1
    assert ddp["max_abs_weight_diff"] == 0  # the resumed run ends with the uninterrupted run's weights
    assert {r["item"] for r in rows if r["section"] == "paper"} == {"resnet20", "resnet56"}
    assert "| section | item | status | result | s |" in done.stdout  # the one table


def test_resnet9_is_pages_network():
    model = models.build("resnet9", 10)
    assert models.count_params(model) == 6_573_120  # 9 weighted layers, 64-128-256-512, bias-free head
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 512, 4, 4)
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    assert torch.equal(model(x), model.forward_head(features))
    with pytest.raises(ValueError, match="32x32"):
        models.build("resnet9", 10, image_size=64)


def test_recipes_are_valid_params():
    from tasks.params import load_params

    t94 = load_params(ROOT / "bench" / "recipes" / "resnet9_94.yaml")
    assert t94.train.architectures == ["resnet9"] and t94.train.batch_size == 512
    assert t94.train.label_smoothing == 0.2 and t94.augment.cutout == 8 and t94.train.optimizer.nesterov
    paper = load_params(ROOT / "bench" / "recipes" / "resnet_cifar_paper.yaml")
    assert paper.train.architectures == ["resnet20", "resnet56"] and paper.train.epochs == 30
