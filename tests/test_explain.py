"""Explain: on a synthetic dataset whose class evidence sits in one corner, a small CNN trained by the real
train stage looks there (Grad-CAM) and needs it (occlusion); the gallery is exactly the split's mistakes;
the pictures are deterministic and leave the model and its metrics untouched; the baselines get what
applies to them; ViT and CoAtNet get attention rollout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models
from tasks import caching
from tasks.augment import augment
from tasks.evaluate import evaluate, logits_file
from tasks.explain import draw_images, explain, explain_images, rollout
from tasks.files import sha256_file
from tasks.layout import Layout
from tasks.params import load_params
from tasks.readers import write_prepared
from tasks.train import train

SIZE, BLOB = 16, 5
CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # quadrants as (row, column)
CLASSES = ["blob", "none"]  # class 0: a bright square in one corner (the class evidence); class 1: noise only
MISLABELLED = 3  # val images whose label is the other class: mistakes the gallery must list


def blob_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images; every other one has a bright square near a random corner. Returns images, labels and
    each image's corner (-1: none)."""
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, SIZE, SIZE, 1)).astype(np.uint8)
    corners = np.where(labels == 0, rng.integers(0, 4, n), -1)
    for image, corner in zip(images, corners):
        if corner >= 0:
            row, col = CORNERS[corner]
            y, x = (rng.integers(0, 3) + side * (SIZE - BLOB - 2) for side in (row, col))
            image[y : y + BLOB, x : x + BLOB] = 230
    return images, labels, corners


OVERRIDES = [
    "device=cpu", "train.architectures=[resnet20, knn]", "train.epochs=4", "train.batch_size=32",
    "train.progress=off", "train.optimizer.lr=0.05", "train.model_options.resnet20={widths: [8, 16, 32]}",
    "augment.crop_padding=0", "augment.hflip=false", "evaluate.measure_speed=false",
    # Grad-CAM at resnet20's 8x8 map (layer2), an occluder the size of a quadrant, six images a class
    "explain.gradcam_min_size=8", "explain.occlusion_window=8", "explain.occlusion_stride=4",
    "explain.images_per_class=6",
]


def make_params(root, *overrides):
    return load_params(root / "none.yaml", [*OVERRIDES, *overrides])


@pytest.fixture(scope="module")
def corner(tmp_path_factory):
    """A CNN and a kNN trained and evaluated by the real stages on the blob data, and their explanations."""
    root = tmp_path_factory.mktemp("corner")
    rng = np.random.default_rng(0)
    val_images, val_labels, val_corners = blob_split(60, rng)
    val_labels[:MISLABELLED] = 1 - val_labels[:MISLABELLED]
    layout = Layout(root)
    write_prepared(layout.prepared, {"train": blob_split(256, rng)[:2], "val": (val_images, val_labels),
                                     "test": blob_split(40, rng)[:2]}, CLASSES)
    params = make_params(root)
    augment(params, layout)
    for arch in ("resnet20", "knn"):
        caching.run_stage("train", train, params, layout, arch, arch=arch)
        caching.run_stage("evaluate", evaluate, params, layout, arch, arch=arch)
    before = {arch: (sha256_file(layout.train(arch) / "model.pt"), sha256_file(layout.eval(arch) / "metrics.json"))
              for arch in ("resnet20", "knn")}
    summaries = {arch: caching.run_stage("explain", explain, params, layout, arch, arch=arch)
                 for arch in ("resnet20", "knn")}
    return params, layout, before, summaries, val_corners


def report(layout, arch):
    return json.loads((layout.explain(arch) / "explain.json").read_text())


def quadrant_shares(maps: np.ndarray, mean: bool = False) -> np.ndarray:
    """(N, 4): each map's share of its mass in each quadrant (CORNERS order), or its mean there."""
    half = maps.shape[-1] // 2
    parts = np.stack([maps[:, r * half : (r + 1) * half, c * half : (c + 1) * half].sum((1, 2)) for r, c in CORNERS], 1)
    return parts / half**2 if mean else parts / maps.sum((1, 2))[:, None].clip(1e-12)


def test_every_picture_is_written_and_readable(corner):
    params, layout, _, summaries, _ = corner
    made = report(layout, "resnet20")["made"]
    assert set(made) == {"filters", "feature_maps", "gradcam", "occlusion", "receptive_field", "mistakes"}
    assert summaries["resnet20"]["gradcam_layer"] == made["gradcam"]["layer"] == "layer2"
    for entry in made.values():
        with Image.open(layout.explain("resnet20") / entry["file"]) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100
    assert caching.is_current("explain", params, layout, "resnet20")


def test_gradcam_looks_at_the_corner_and_occluding_it_lowers_the_class_score(corner):
    _, layout, _, _, val_corners = corner
    folder, rep = layout.explain("resnet20"), report(layout, "resnet20")
    drawn = np.array(rep["drawn"])
    # the drawn images labelled "blob" that have one (the mislabelled ones are the first MISLABELLED)
    blobs = [i for i, index in enumerate(drawn) if rep["labels"][i] == "blob" and val_corners[index] >= 0]
    corners = val_corners[drawn[blobs]]
    assert len(blobs) >= 4 and [rep["predicted"][i] for i in blobs] == ["blob"] * len(blobs)
    cam = quadrant_shares(np.load(folder / "maps" / "gradcam.npy")[blobs])
    assert (cam.argmax(1) == corners).all() and (cam[np.arange(len(blobs)), corners] > 0.5).all(), cam
    drop = quadrant_shares(np.load(folder / "maps" / "occlusion.npy")[blobs], mean=True)  # drop of p(blob)
    assert (drop.argmax(1) == corners).all() and (drop[np.arange(len(blobs)), corners] > 0.1).all(), drop


def test_the_gallery_lists_exactly_the_misclassified_images(corner):
    _, layout, _, _, _ = corner
    found = json.loads((layout.explain("resnet20") / "mistakes.json").read_text())
    logits = np.load(logits_file(layout.eval("resnet20"), "val"))  # what evaluate saw, computed apart
    labels = np.load(logits_file(layout.eval("resnet20"), "val", "labels"))
    wrong = set(np.flatnonzero(logits.argmax(1) != labels).tolist())
    assert {m["index"] for m in found["mistakes"]} == wrong and found["errors"] == len(wrong)
    assert set(range(MISLABELLED)) <= wrong  # the planted mistakes are among them
    confidences = [m["confidence"] for m in found["mistakes"]]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(p["count"] for p in found["confused_pairs"]) == len(wrong)


def test_explaining_changes_no_weights_or_metrics_and_is_deterministic(corner):
    params, layout, before, _, _ = corner
    folder = layout.explain("resnet20")
    first = {p.relative_to(folder): p.read_bytes() for p in (*folder.glob("*.png"), *folder.glob("maps/*.npy"))}
    caching.run_stage("explain", explain, params, layout, "resnet20", arch="resnet20")
    again = {p.relative_to(folder): p.read_bytes() for p in (*folder.glob("*.png"), *folder.glob("maps/*.npy"))}
    assert again == first and len(first) == 9  # six pictures, three maps: byte for byte
    for arch, (weights, metrics) in before.items():
        assert sha256_file(layout.train(arch) / "model.pt") == weights
        assert sha256_file(layout.eval(arch) / "metrics.json") == metrics


def test_a_fitted_baseline_gets_the_gallery_and_occlusion_and_says_why_not_the_rest(corner):
    _, layout, _, summaries, _ = corner
    rep = report(layout, "knn")
    assert set(rep["made"]) == {"occlusion", "mistakes"}
    assert "fitted" in rep["skipped"]["gradcam"] and "fitted" in rep["skipped"]["filters"]
    assert summaries["knn"]["skipped"] == ["attention", "feature_maps", "filters", "gradcam", "receptive_field"]


def test_the_cache_key_follows_what_the_pictures_depend_on(corner):
    params, layout, _, _, _ = corner
    key = caching.cache_key("explain", params, layout, "resnet20")
    assert caching.cache_key("explain", make_params(layout.root, "explain.top_models=1"), layout, "resnet20") == key
    assert caching.cache_key("explain", make_params(layout.root, "explain.seed=1"), layout, "resnet20") != key
    assert caching.cache_key("explain", make_params(layout.root, "train.epochs=5"), layout, "resnet20") == key


def test_disabled_the_stage_writes_only_a_note_saying_so(tmp_path):
    """`zooflow explain` (and dvc's explain@arch) with explain.enabled: false: no model is read, no picture made."""
    summary = explain(make_params(tmp_path, "explain.enabled=false"), Layout(tmp_path), "resnet20")
    assert summary == {"arch": "resnet20", "skipped": "explain.enabled: false"}
    assert [p.name for p in Layout(tmp_path).explain("resnet20").iterdir()] == ["explain.json"]


def test_draw_is_class_balanced_and_fixed_by_its_seed():
    labels = np.repeat(np.arange(12), 5)
    drawn = draw_images(labels, 2, 4, seed=3)
    assert np.bincount(labels[drawn]).tolist() == [2, 0, 0, 0, 2, 0, 0, 2, 0, 0, 0, 2]
    assert drawn.tolist() == draw_images(labels, 2, 4, seed=3).tolist()
    assert drawn.tolist() != draw_images(labels, 2, 4, seed=4).tolist()


def test_rollout_follows_attention_through_the_residual_path():
    tokens = 1 + 4  # a class token and a 2x2 grid of patches
    attend = torch.zeros(1, tokens, tokens)
    attend[:, :, 3] = 1.0  # every token attends to patch 2 only
    relevance = rollout([attend, attend], class_token=True)
    assert relevance.shape == (1, 2, 2) and relevance.flatten().argmax().item() == 2
    uniform = rollout([torch.full((1, 4, 4), 0.25)], class_token=False)
    assert torch.allclose(uniform, torch.full((1, 2, 2), 0.25))


@pytest.mark.parametrize("arch, options", [
    ("vit_tiny_patch4", {"num_layers": 2, "hidden_dim": 24, "mlp_dim": 48, "num_heads": 2}),
    ("coatnet_0", {"depths": [1, 1, 1, 1, 1], "dims": [8, 8, 16, 32, 32], "head_dim": 8}),
])
def test_transformers_get_attention_rollout(tmp_path, arch, options):
    torch.manual_seed(0)
    model = models.build(arch, num_classes=2, in_channels=1, image_size=SIZE, **options).eval()
    images, labels, _ = blob_split(8, np.random.default_rng(1))
    params = make_params(tmp_path)
    prep = {"image_size": SIZE, "channels": 1, "mean": [0.2], "std": [0.3]}
    rep = explain_images(model, images, labels, CLASSES, prep, params.explain, torch.device("cpu"),
                         tmp_path, arch)
    assert "attention" in rep["made"] and (tmp_path / "attention.png").stat().st_size > 0
    maps = np.load(tmp_path / "maps" / "attention.npy")
    assert maps.shape == (8, SIZE, SIZE) and np.allclose(maps.max((1, 2)), 1.0)
    assert ("gradcam" in rep["skipped"]) == (arch == "vit_tiny_patch4")


def test_your_own_images_are_explained_beside_the_stage(corner, tmp_path, monkeypatch, capsys):
    import sys

    from flows import cli
    from registry_fixtures import chdir

    params, layout, _, _, _ = corner
    images, _, corners = blob_split(4, np.random.default_rng(5))
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"mine{i}.png")
        Image.fromarray(np.kron(image[..., 0], np.ones((3, 3), np.uint8))).save(paths[-1])  # 48 px: resized

    def zooflow(*args: str) -> tuple[int, str, list[str]]:
        overrides = [arg for o in OVERRIDES for arg in ("-S", o)]
        monkeypatch.setattr(sys, "argv", ["zooflow", "explain", "--arch", "resnet20", *args, *overrides])
        with chdir(layout.root):
            code = cli.run_cli()
        out, err = capsys.readouterr()
        return code, out, [line for line in err.splitlines() if line.strip()]

    code, out, err = zooflow(*[arg for p in paths for arg in ("--images", str(p))], "--json")
    assert code == 0, err
    summary = json.loads(out)
    folder = layout.root / "outputs" / "explain-images" / "resnet20"
    assert Path(summary["folder"]).resolve() == folder.resolve() and (folder / "gradcam.png").stat().st_size > 0
    assert [summary["predicted"][str(p)] for p in paths] == ["blob" if c >= 0 else "none" for c in corners]
    assert caching.is_current("explain", params, layout, "resnet20")  # the stage's own folder untouched
    code, _, err = zooflow("--images", str(paths[0]), "--images", str(tmp_path / "nope.png"))
    assert code == 2 and err == [f"error: --images {tmp_path / 'nope.png'}: no such file"]


def test_the_top_models_pictures_are_a_prefect_artifact(corner, prefect_harness, monkeypatch):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks import orchestration, tracking
    from tasks.files import write_json
    from tasks.leaderboard import leaderboard

    params, layout, _, _, _ = corner
    rows = leaderboard(params, layout)

    @flow
    def publish():
        return orchestration.explanations_artifact(params, layout, rows)

    def markdown() -> str:
        state = publish(return_state=True)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        return {a.key: a for a in artifacts}["explanations"].data

    local = markdown()
    assert ". resnet20: val " in local and ". knn: val " in local and "no gradcam: knn is fitted" in local
    assert "Grad-CAM at `layer2`" in local and "`outputs/explain/resnet20/gradcam.png`" in local
    # With an MLflow server the pictures show inline, served from the model's run.
    monkeypatch.setattr(tracking, "tracking_uri", lambda params: "https://mlflow.example.org")
    write_json(layout.root / "outputs" / "runs" / "resnet20.json", {"run_id": "cnnrun", "parent_run_id": None})
    served = markdown()
    url = "https://mlflow.example.org/get-artifact?path=explain/gradcam.png&run_uuid=cnnrun"
    assert f"![resnet20 gradcam.png]({url})" in served
