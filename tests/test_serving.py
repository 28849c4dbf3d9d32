"""Serving: `mlflow models serve` on the @staging alias answers a POST of raw images with labels."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from registry_fixtures import chdir, free_port, register_arch, service, shared_state
from tasks import tracking
from tasks.readers import load_prepared
from tasks.promote import promote
from tasks.serving import as_nhwc, preprocess


def test_preprocess_resizes_and_converts_channels():
    rgb = np.full((2, 20, 24, 3), 255, dtype=np.uint8)
    x = preprocess(rgb, image_size=16, channels=1, mean=[0.5], std=[0.25])
    assert x.shape == (2, 1, 16, 16) and torch.allclose(x, torch.full_like(x, 2.0), atol=1e-4)
    grey = np.zeros((3, 8, 8), dtype=np.uint8)  # N x H x W: grey, no channel axis
    assert as_nhwc(grey).shape == (3, 8, 8, 1)
    x = preprocess(grey, image_size=16, channels=3, mean=[0, 0, 0], std=[1, 1, 1])
    assert x.shape == (3, 3, 16, 16) and float(x.abs().max()) == 0


@pytest.mark.slow
def test_models_serve_answers_a_post_with_labels(tmp_path_factory):
    state = shared_state(tmp_path_factory, "digits-serving")
    with chdir(state.root):
        register_arch(state, "knn")
        assert promote(state.params, state.layout)["moved"]
    images, labels = load_prepared(state.layout.prepared).split("test")
    x = torch.from_numpy(np.array(images[:40])).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(20, 20), mode="bilinear").round().clamp(0, 255).to(torch.uint8)  # another size
    payload = json.dumps({"inputs": x.permute(0, 2, 3, 1).numpy().tolist()}).encode()
    port = free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    assert shutil.which(mlflow_bin), mlflow_bin
    cmd = [mlflow_bin, "models", "serve", "-m", "models:/digits-serving@staging", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    # the scoring server execs `uvicorn`: this interpreter's scripts must be on PATH
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(state.params),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with service(cmd, f"http://127.0.0.1:{port}/ping", state.root, env, timeout=240):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=payload,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            answer = json.loads(reply.read())
    predictions = answer["predictions"]
    assert len(predictions) == 40
    predicted = np.array([p["label"] for p in predictions])
    assert np.mean(predicted == labels[:40]) > 0.8
    assert all(p["class_name"] == state.classes[p["label"]] for p in predictions)
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in predictions)


def test_uint8_is_always_scaled_and_float_in_unit_range_is_not():
    ones = np.ones((1, 4, 4, 1), dtype=np.uint8)  # a dark uint8 image: 1/255, not 1.0
    x = preprocess(ones, image_size=4, channels=1, mean=[0.0], std=[1.0])
    assert torch.allclose(x, torch.full_like(x, 1 / 255))
    unit = np.full((1, 4, 4, 1), 0.5, dtype=np.float32)
    assert torch.allclose(preprocess(unit, image_size=4, channels=1, mean=[0.0], std=[1.0]), torch.tensor(0.5))
