"""Serving: the input contract of the served model, its resize (the one ingest used), and `mlflow models
serve` on the @staging alias answering raw images exactly as the evaluate stage measured them."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from registry_fixtures import chdir, free_port, register_arch, service, shared_state
from tasks import tracking
from tasks.decode import conform
from tasks.ingest import ingest
from tasks.layout import Layout
from tasks.params import load_params
from tasks.readers import load_prepared
from tasks.promote import promote
from tasks.serving import InputError, as_nhwc, preprocess
from tasks.sources import digits_source


def raw_test_digits(layout: Layout) -> np.ndarray:
    """The 8 x 8 originals of the prepared test split, in its order (the manifest maps each to its record)."""
    import csv

    raw = {record.name: record.payload for batch in digits_source().items for record in batch}
    with open(layout.prepared / "manifest.csv", newline="") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["split"] == "test"), key=lambda r: int(r["index"]))
    return np.stack([raw[r["path"]] for r in rows])


def test_preprocess_resizes_and_converts_channels():
    rgb = np.full((2, 20, 24, 3), 255, dtype=np.uint8)
    x = preprocess(rgb, image_size=16, channels=1, mean=[0.5], std=[0.25])
    assert x.shape == (2, 1, 16, 16) and torch.allclose(x, torch.full_like(x, 2.0), atol=1e-4)
    grey = np.zeros((3, 8, 8), dtype=np.uint8)  # N x H x W: grey, no channel axis
    assert as_nhwc(grey).shape == (3, 8, 8, 1)
    x = preprocess(grey, image_size=16, channels=3, mean=[0, 0, 0], std=[1, 1, 1])
    assert x.shape == (3, 3, 16, 16) and float(x.abs().max()) == 0


@pytest.mark.parametrize("images, says", [
    (np.full((2, 8, 8, 1), 0.5), "got float64 of shape (2, 8, 8, 1) with values in [0.5, 0.5]: floats are not"),
    (np.zeros((2, 8, 8, 5), np.uint8), "got uint8 of shape (2, 8, 8, 5)"),  # 1 or 3 channels only
    (np.zeros((2, 8, 8, 4), np.uint8), "got uint8 of shape (2, 8, 8, 4)"),
    (np.zeros((8, 8), np.uint8), "got uint8 of shape (8, 8)"),  # one image, not a batch
    (np.full((1, 4, 4, 3), 300), "got int64 of shape (1, 4, 4, 3) with values in [300, 300]"),
    ([[[[1]], [[2]]], [[[3]]]], "got images of different sizes"),
])
def test_the_input_contract_refuses_in_one_line_what_it_cannot_read(images, says):
    with pytest.raises(InputError) as refused:
        preprocess(images, image_size=8, channels=1, mean=[0.0], std=[1.0])
    message = str(refused.value)
    assert message.startswith("expected uint8 images N x H x W x C with C = 1 or 3") and says in message
    assert "\n" not in message and len(message) < 260  # the shapes and dtypes, never the pixels


def test_json_integers_are_pixels_and_uint8_is_always_scaled():
    ones = np.ones((1, 4, 4, 1), dtype=np.uint8)  # a dark uint8 image: 1/255, not 1.0
    x = preprocess(ones, image_size=4, channels=1, mean=[0.0], std=[1.0])
    assert torch.allclose(x, torch.full_like(x, 1 / 255))
    assert torch.equal(preprocess(ones.astype(np.int64).tolist(), 4, 1, [0.0], [1.0]), x)


def test_serving_resizes_a_raw_image_exactly_as_ingest_did(project):
    """The 8 x 8 digits of the test split, served raw, become the very pixels the models were evaluated on."""
    params = load_params("params.yaml", ["data.image_size=16", "data.workers=1"], check_zoo=False)
    ingest(params, Layout())
    images, _ = load_prepared(Layout().prepared).split("test")
    raw = raw_test_digits(Layout())
    assert raw.shape[1:] == (8, 8) and len(raw) == len(images)
    assert torch.equal(preprocess(raw, 16, 1, [0.5], [0.25]), preprocess(np.asarray(images), 16, 1, [0.5], [0.25]))
    assert np.array_equal(conform(Image.fromarray(raw[0]), 16, 1), images[0])


@pytest.mark.slow
def test_models_serve_agrees_with_evaluate_image_for_image_and_refuses_bad_input(tmp_path_factory):
    """`zooflow serve` (`mlflow models serve`) on @staging, sent the raw 8 x 8 test digits as JSON integers: the same label
    as the evaluate stage gave every image. Floats and 5 channels: HTTP 400 and one short line."""
    state = shared_state(tmp_path_factory, "digits-serving")
    with chdir(state.root):
        register_arch(state, "linear")
        assert promote(state.params, state.layout)["moved"]
    evaluated = np.load(state.layout.eval("linear") / "logits" / "test_logits.npy").argmax(1)
    raw = raw_test_digits(state.layout)
    port = free_port()
    # `zooflow serve` as the README runs it: `mlflow models serve` on NAME@staging, this environment's
    # `uvicorn` put on PATH by the command itself (PATH here has no venv in it)
    cmd = [sys.executable, "-m", "flows.cli", "serve", "digits-serving", "--port", str(port),
           "-S", f"mlflow.tracking_uri={tracking.tracking_uri(state.params)}"]
    env = {"PATH": os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                   if Path(p).resolve() != Path(sys.executable).parent.resolve()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}

    def post(images) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with service(cmd, f"http://127.0.0.1:{port}/ping", state.root, env, timeout=240):
        status, answer = post(raw.tolist())
        floats = post((raw[:2, :, :, None] / 255.0).tolist())
        five = post(np.zeros((2, 8, 8, 5), np.uint8).tolist())
    assert status == 200
    predictions = answer["predictions"]
    served = np.array([p["label"] for p in predictions])
    assert len(served) == len(evaluated) > 300
    assert np.array_equal(served, evaluated), f"{int((served != evaluated).sum())} of {len(served)} images differ"
    assert all(p["class_name"] == state.classes[p["label"]] for p in predictions)
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in predictions)
    for (code, error), says in ((floats, "got float64 of shape (2, 8, 8, 1)"), (five, "got int64 of shape (2, 8, 8, 5)")):
        assert code == 400 and error["error_code"] == "INVALID_PARAMETER_VALUE", error
        assert error["message"].startswith("expected uint8 images") and says in error["message"], error["message"]
        assert len(error["message"]) < 260
