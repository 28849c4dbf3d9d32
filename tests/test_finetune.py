"""Starting from weights that exist, for real: a LeNet-5 trained on one half of the embedded digits and
registered in a real MLflow registry (sqlite) starts the training on the other half; a ResNet-20's
weights saved as a file start a 5-class task with its backbone frozen; torchvision's file is read from a temporary
torch cache. Tiny sizes, CPU, seconds each."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import models
from tasks import caching, engine, init_weights, tracking
from tasks.errors import UserError
from tasks.layout import Layout
from tasks.params import Params, load_params
from tasks.readers import write_prepared
from tests.registry_fixtures import chdir

MODEL = "digits-ft"
CLASSES = [str(i) for i in range(10)]
RESNET = {"stem_stride": 2, "widths": [8, 16, 32]}  # params.yaml's small ResNet-20


def digits(pool: slice, n_train: int, classes: int = 10) -> dict:
    """Real digits (8x8, upscaled to LeNet-5's 32x32), a pool of them shuffled once, as train/val/test;
    only the first `classes` classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.kron(d.images, np.ones((4, 4))) * 15).round().clip(0, 255).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(y))[pool]
    idx = idx[y[idx] < classes]
    cut = [n_train, n_train + 100, n_train + 200]
    return {"train": (x[idx[:cut[0]]], y[idx[:cut[0]]]), "val": (x[idx[cut[0]:cut[1]]], y[idx[cut[0]:cut[1]]]),
            "test": (x[idx[cut[1]:cut[2]]], y[idx[cut[1]:cut[2]]])}


def make_params(root: Path, arch: str = "lenet5", **train) -> Params:
    recipe = {"architectures": [arch], "epochs": 4, "batch_size": 32, "progress": "off", "optimizer": {"lr": 0.05},
              "model_options": {"resnet20": RESNET}}
    recipe.update(train)
    return Params.model_validate({
        "device": "cpu", "train": recipe, "augment": {"hflip": False, "crop_padding": 0, "preview_images": 4},
        "evaluate": {"measure_speed": False}, "register": {"model_name": MODEL},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}})


def project(folder: Path, splits: dict, classes: list[str] = CLASSES) -> Layout:
    """A prepared dataset in `folder` and its normalisation statistics (the augment stage)."""
    from tasks.augment import augment

    layout = Layout(folder)
    write_prepared(layout.prepared, splits, classes)
    caching.run_stage("augment", augment, make_params(folder), layout)
    return layout


def history(layout: Layout, arch: str = "lenet5") -> list[dict]:
    return json.loads((layout.train(arch) / "history.json").read_text())


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """v1: LeNet-5 trained on half A of the digits (400 images, 3 epochs), registered, @staging. Then on
    half B (200 images, 4 epochs):
    once fine-tuned from @staging (an MLflow run of its own), once from scratch; the fine-tune is
    evaluated and registered as v2. Also a ResNet-20's initial weights as a file (for freezing and
    mismatches its accuracy does not matter, so it is not trained: seconds saved)."""
    from tasks.evaluate import evaluate
    from tasks.promote import promote_version
    from tasks.register import register
    from tasks.train import train, train_tracked

    root = tmp_path_factory.mktemp("finetune")
    with chdir(root):  # MLflow's local artifact store is ./mlartifacts
        a = project(root / "a", digits(slice(0, 800), 400))
        pa = make_params(root, epochs=3)
        caching.run_stage("train", train, pa, a, "lenet5", arch="lenet5")
        caching.run_stage("evaluate", evaluate, pa, a, "lenet5", arch="lenet5")
        v1 = register(pa, a)["version"]
        promote_version(pa, MODEL, v1, "staging")
        torch.manual_seed(0)
        resnet20 = root / "resnet20.pt"
        torch.save(models.build("resnet20", num_classes=10, in_channels=1, image_size=32, **RESNET).state_dict(),
                   resnet20)

        half_b = digits(slice(800, 1797), 200)
        b, scratch = project(root / "b", half_b), project(root / "scratch", half_b)
        pb = make_params(root, init=f"models:/{MODEL}@staging")
        tuned = caching.run_stage("train", train_tracked, pb, b, "lenet5", arch="lenet5")
        caching.run_stage("train", train, make_params(root), scratch, "lenet5", arch="lenet5")
        key_v1 = caching.cache_key("train", pb, b, "lenet5")
        caching.run_stage("evaluate", evaluate, pb, b, "lenet5", arch="lenet5")
        v2 = register(pb, b)["version"]
    return SimpleNamespace(root=root, a=a, b=b, scratch=scratch, pa=pa, pb=pb, v1=v1, v2=v2, tuned=tuned,
                           key_v1=key_v1, resnet20=resnet20)


# --------------------------------------------------------------------------- from a registered version


def test_fine_tuning_from_staging_starts_lower_and_converges_in_fewer_epochs(story):
    tuned, scratch = history(story.b), history(story.scratch)
    assert story.tuned["init"]["from"] == f"models:/{MODEL}/{story.v1}"
    assert story.tuned["init"]["head"] == "kept"  # the same ten digits
    # The first epoch: the fine-tune starts where v1 left off, scratch from its initialisation.
    assert tuned[0]["train_loss"] < 0.5 * scratch[0]["train_loss"]
    assert tuned[0]["val_loss"] < scratch[0]["val_loss"]

    def epochs_to(rows: list[dict], acc: float) -> float:
        return next((r["epoch"] + 1 for r in rows if r["val_acc"] >= acc), float("inf"))

    target = 0.85  # scratch reaches it at epoch 2 (0.88), the fine-tune at epoch 1
    assert max(r["val_acc"] for r in scratch) > 0.6  # scratch learns too, only later
    assert epochs_to(tuned, target) < epochs_to(scratch, target), (tuned, scratch)


def test_the_fine_tuned_version_names_its_parent(story):
    client = tracking.client(story.pb)
    parent = f"models:/{MODEL}/{story.v1}"
    version = client.get_model_version(MODEL, story.v2)
    assert version.tags["zooflow.parent_version"] == parent
    assert version.tags["zooflow.init"] == f"lenet5={parent}"
    assert f"grew from {parent}" in version.description
    assert f"lenet5 started from `{parent}` (train.init `models:/{MODEL}@staging`" in version.description
    # ... and so does its training run
    run = client.get_run(story.tuned["run_id"])
    assert run.data.tags["zooflow.parent_version"] == parent
    # v1 started from scratch: no parent
    assert "zooflow.parent_version" not in client.get_model_version(MODEL, story.v1).tags


def test_moving_staging_makes_the_next_run_train_again(story):
    from tasks.promote import promote_version

    params, b = story.pb, story.b
    assert caching.cached_summary("train", params, b, "lenet5") is not None  # @staging is v1: cached
    with chdir(story.root):
        promote_version(params, MODEL, story.v2, "staging")
        try:
            key_v2 = caching.cache_key("train", params, b, "lenet5")
            assert key_v2 != story.key_v1
            assert caching.cached_summary("train", params, b, "lenet5") is None  # the next run re-trains
            stamp = json.loads((b.train("lenet5") / "stage.json").read_text())
            assert stamp["inputs"]["init"]["from"] == f"models:/{MODEL}/{story.v1}"

            # Warm start: @staging's architecture, from @staging's version, pinned for the whole run.
            overrides = init_weights.warm_start(params, "staging")
            assert overrides == ["train.architectures=[lenet5]", f"train.overrides.lenet5.init=models:/{MODEL}/{story.v2}"]
            warm = load_params(story.root / "params.yaml", [f"register.model_name={MODEL}",
                                                              f"mlflow.tracking_uri=sqlite:///{story.root / 'mlflow.db'}",
                                                              *overrides])
            assert warm.train.architectures == ["lenet5"]
            assert warm.train.for_arch("lenet5").init == f"models:/{MODEL}/{story.v2}"
            assert init_weights.identity(warm, b, "lenet5") == init_weights.identity(params, b, "lenet5")
            with pytest.raises(UserError) as exc:
                init_weights.warm_start(params, "production")
            assert f"model {MODEL!r} has no @production version" in one_line(exc)
        finally:
            promote_version(params, MODEL, story.v1, "staging")


def test_a_source_that_does_not_fit_fails_with_one_line(story):
    from tasks.train import train

    # The registered version holds a LeNet-5, not a ResNet-20.
    params = make_params(story.root, "resnet20", init=f"models:/{MODEL}/{story.v1}")
    with pytest.raises(UserError) as exc:
        train(params, story.b, "resnet20")
    assert f"models:/{MODEL}/{story.v1} holds lenet5, not resnet20" in one_line(exc)
    # A LeNet-5 file for a ResNet-20: the keys name both sides.
    lenet = story.a.train("lenet5") / "model.pt"
    with pytest.raises(UserError) as exc:
        train(make_params(story.root, "resnet20", init=str(lenet)), story.b, "resnet20")
    assert re.search(r"not weights of resnet20: \d+ of resnet20's tensors missing there \(first: \S+\); "
                     r"\d+ there that resnet20 lacks \(first: f6\.", one_line(exc)), str(exc.value)
    # The same architecture built otherwise: the tensor and both shapes.
    wide = make_params(story.root, "resnet20", init=str(story.resnet20),
                       model_options={"resnet20": {"stem_stride": 2, "widths": [16, 32, 64]}})
    with pytest.raises(UserError) as exc:
        train(wide, story.b, "resnet20")
    assert "does not fit resnet20 as built here: conv1.weight is 8x1x3x3 there, 16x1x3x3 here" in one_line(exc)
    with pytest.raises(UserError) as exc:
        train(make_params(story.root, init=str(story.root / "nope.pt")), story.b, "lenet5")
    assert "train.init " + str(story.root / "nope.pt") + ": no such weights file" in one_line(exc)


def test_a_bad_source_exits_2_with_one_line_from_the_cli(story, monkeypatch, capsys):
    from flows import cli

    lenet = story.a.train("lenet5") / "model.pt"
    monkeypatch.chdir(story.b.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{story.root / 'mlflow.db'}")
    monkeypatch.setattr(sys, "argv", ["zooflow", "train", "--arch", "resnet20", "-S", f"train.init={lenet}",
                                      "-S", "train.architectures=[resnet20]", "-S", "train.epochs=1"])
    assert cli.run_cli() == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: train.init {lenet}: not weights of resnet20"), lines


# --------------------------------------------------------------------------- freezing, the head, resume


def five_digits(story) -> Layout:
    folder = story.root / "five"
    return Layout(folder) if (folder / "data").exists() else project(folder, digits(slice(800, 1797), 200, 5),
                                                                     CLASSES[:5])


def test_freeze_trains_only_the_new_head_then_everything(story):
    from tasks.train import train

    source = torch.load(story.resnet20, weights_only=True)
    layout = five_digits(story)
    params = make_params(story.root, "resnet20", epochs=3, init=str(story.resnet20), max_steps_per_epoch=2,
                         finetune={"freeze_epochs": 2, "backbone_lr_mult": 0.1})
    seen = []

    def after_epoch(metrics, epoch):  # the checkpoint of every epoch, as it was written
        seen.append(torch.load(layout.train("resnet20") / "checkpoint.pt", weights_only=True)["model"])

    summary = train(params, layout, "resnet20", log=after_epoch)
    assert summary["init"]["head"] == "replaced: 10 classes there, 5 here"
    head = {"fc.weight", "fc.bias"}
    for epoch, weights in enumerate(seen[:2]):  # frozen: every backbone tensor, BatchNorm statistics included
        assert weights["fc.weight"].shape == (5, 32)
        changed = [k for k in source if k not in head and not torch.equal(source[k], weights[k])]
        assert changed == [], f"epoch {epoch + 1}: {changed[:3]}"
    assert not torch.equal(seen[0]["fc.weight"], seen[1]["fc.weight"])  # the head trains
    thawed = [k for k in source if k not in head and not torch.equal(source[k], seen[2][k])]
    assert "conv1.weight" in thawed and "bn1.running_mean" in thawed
    assert [h["backbone_frozen"] for h in history(layout, "resnet20")] == [True, True, False]


def test_resume_is_bit_exact_across_the_freeze_boundary(story, tmp_path, monkeypatch):
    from tasks.train import train

    params = make_params(story.root, "resnet20", epochs=3, init=str(story.resnet20), max_steps_per_epoch=2,
                         finetune={"freeze_epochs": 2, "backbone_lr_mult": 0.1},
                         optimizer={"lr": 0.05, "nesterov": True}, ema_decay=0.8)
    prepared = five_digits(story).prepared
    real = engine.save_checkpoint

    class Killed(Exception):
        pass

    def run(folder: Path, stop_after: int | None) -> dict:
        layout = Layout(folder)
        if not layout.prepared.exists():
            shutil.copytree(prepared, layout.prepared)
        calls = []

        def checkpoint(path, state):
            real(path, state)
            calls.append(1)
            if len(calls) == stop_after:
                raise Killed

        monkeypatch.setattr(engine, "save_checkpoint", checkpoint)
        try:
            train(params, layout, "resnet20")
        except Killed:
            pass
        monkeypatch.setattr(engine, "save_checkpoint", real)
        return torch.load(layout.train("resnet20") / "checkpoint.pt", weights_only=True)

    whole = run(tmp_path / "whole", None)
    # Stopped inside the frozen epochs: the resumed run starts frozen and thaws on schedule.
    run(tmp_path / "stopped", 1)
    resumed = run(tmp_path / "stopped", None)
    assert resumed["epoch"] == whole["epoch"] == 3
    for k in whole["model"]:
        assert torch.equal(whole["model"][k], resumed["model"][k]), k
    for k in whole["ema"]["module"]:
        assert torch.equal(whole["ema"]["module"][k], resumed["ema"]["module"][k]), f"ema {k}"
    assert [h["backbone_frozen"] for h in resumed["history"]] == [True, True, False]
    assert [h["val_acc"] for h in whole["history"]] == [h["val_acc"] for h in resumed["history"]]


def test_param_groups_give_the_backbone_its_own_lr():
    from tasks.optim import build_optimizer
    from tasks.params import OptimizerParams

    model = models.build("resnet20", num_classes=5, in_channels=1, image_size=32, **RESNET)
    opt = build_optimizer(model, OptimizerParams(lr=0.1, exclude_bn_bias_decay=True), torch.device("cpu"), 0.1)
    head = {id(model.fc.weight), id(model.fc.bias)}
    by_lr = {}
    for group in opt.param_groups:
        for p in group["params"]:
            by_lr[id(p)] = (group["base_lr"], group["weight_decay"])
    assert by_lr[id(model.fc.weight)] == (0.1, 5e-4) and by_lr[id(model.fc.bias)] == (0.1, 0.0)
    assert by_lr[id(model.conv1.weight)] == (pytest.approx(0.01), 5e-4)
    assert by_lr[id(model.bn1.weight)] == (pytest.approx(0.01), 0.0)
    assert len(by_lr) == sum(1 for _ in model.parameters()) and opt.param_groups[0]["params"][0] is not None
    assert {id(p) for p in opt.param_groups[0]["params"]} <= head  # the logged lr is the head's


# --------------------------------------------------------------------------- torchvision, channels, the zoo


def test_torchvision_weights_come_from_the_local_cache_only(story, tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    from tasks.train import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    params = make_params(story.root, "resnet18", init="IMAGENET1K_V1", epochs=1, max_steps_per_epoch=2,
                         batch_size=8)
    file_name = Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    with pytest.raises(UserError) as exc:  # offline and not cached: where to put which file, no download
        train(params, story.b, "resnet18")
    assert (f"put {file_name} (from {ResNet18_Weights.IMAGENET1K_V1.url}) into {tmp_path / 'torch' / 'hub' / 'checkpoints'}"
            in one_line(exc))

    torch.manual_seed(1)
    imagenet = resnet18().state_dict()  # "pretrained" weights, as torchvision's file holds them
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet, cache / file_name)
    summary = train(params, story.b, "resnet18")
    assert summary["model"]["options"] == {"variant": "imagenet"}  # torchvision's network: the ImageNet stem
    assert summary["init"]["from"] == "torchvision:resnet18.IMAGENET1K_V1"
    assert summary["init"]["head"] == "replaced: 1000 classes there, 10 here"
    assert summary["init"]["first_conv"] == "conv1: 3 -> 1 channels, summed over RGB"

    start = models.build("resnet18", num_classes=10, in_channels=1, image_size=32, variant="imagenet")
    init_weights.load_into(start, init_weights.resolve(params, story.b, "resnet18"), "resnet18", CLASSES)
    state = start.state_dict()
    assert torch.equal(state["conv1.weight"], imagenet["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(state["layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    assert torch.equal(state["bn1.running_var"], imagenet["bn1.running_var"])
    assert state["fc.weight"].shape == (10, 512)
    # What the train key holds: the file's hash; another file, another key.
    key = caching.cache_key("train", params, story.b, "resnet18")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in imagenet.items()}, cache / file_name)
    assert caching.cache_key("train", params, story.b, "resnet18") != key


def test_the_head_is_new_when_the_class_names_differ_or_when_asked(story):
    """A zooflow model.pt names its classes (train.json beside it): the same count, other names, a new head."""
    lenet = init_weights.resolve(make_params(story.root, init=str(story.a.train("lenet5") / "model.pt")),
                                 story.a, "lenet5")
    assert lenet.classes == CLASSES
    source = torch.load(lenet.path, weights_only=True)
    letters = [chr(ord("a") + i) for i in range(10)]
    for classes, new_head, head in ((CLASSES, False, "kept"), (letters, False, "replaced: the same number of "
                                    "classes, other names"), (CLASSES, True, "replaced (train.finetune.new_head)")):
        torch.manual_seed(0)
        model = models.build("lenet5", num_classes=10, in_channels=1, image_size=32)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        record = init_weights.load_into(model, lenet, "lenet5", classes, new_head=new_head)
        assert record["head"] == head
        state = model.state_dict()
        expected = source if head == "kept" else fresh
        assert torch.equal(state["output.weight"], expected["output.weight"]), head
        assert torch.equal(state["features.0.weight"], source["features.0.weight"])


def test_grey_weights_start_an_rgb_model(story):
    source = init_weights.Source("grey.pt", "file", story.a.train("lenet5") / "model.pt", "grey.pt")
    grey = torch.load(source.path, weights_only=True)
    rgb = models.build("lenet5", num_classes=10, in_channels=3, image_size=32)
    record = init_weights.load_into(rgb, source, "lenet5", CLASSES)
    stem = init_weights.first_conv(rgb)
    assert record["first_conv"] == f"{stem}: 1 -> 3 channels, grey repeated / 3"
    weight = rgb.state_dict()[f"{stem}.weight"]
    assert torch.equal(weight, grey[f"{stem}.weight"].repeat(1, 3, 1, 1) / 3)
    # An RGB image whose channels are equal is seen as the grey network saw the grey image.
    x = torch.rand(2, 1, 32, 32)
    grey_model = models.build("lenet5", num_classes=10, in_channels=1, image_size=32)
    grey_model.load_state_dict(grey)
    assert torch.allclose(rgb.eval()(x.expand(-1, 3, -1, -1)), grey_model.eval()(x), atol=1e-5)


def test_the_first_convolution_is_the_stem_in_every_family():
    """`first_conv` is the layer that sees the image's channels, in one variant of every family."""
    firsts = {}
    for name, info in models.available().items():
        if info.trained_by == "sgd" and info.family not in firsts:
            firsts[info.family] = name
    for family, name in sorted(firsts.items()):
        size = 224 if models.available()[name].scale == "imagenet" else 32
        with torch.device("meta"):
            model = models.build(name, num_classes=10, in_channels=1, image_size=size)
        stem = init_weights.first_conv(model)
        if stem is None:  # the pixel baselines: no convolution
            assert name in ("linear", "mlp"), name
            continue
        assert model.get_submodule(stem).in_channels == 1, (family, name, stem)


@pytest.mark.parametrize("arch", ["alexnet_torchvision", "googlenet_torchvision", "vgg11_bn", "resnet18",
                                  "resnext50_32x4d", "wide_resnet50_2", "densenet121", "efficientnet_b0", "vit_b_32"])
def test_torchvision_names_are_torchvision_module_for_module(arch):
    """One per family of `init_weights.TORCHVISION`: the zoo's network has torchvision's keys and shapes."""
    from torchvision.models import get_model

    with torch.device("meta"):
        ours = models.build(arch, num_classes=1000, in_channels=3, image_size=224).state_dict()
        theirs = get_model(init_weights.TORCHVISION[arch], weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_vit_position_embeddings_follow_the_patch_grid(tmp_path):
    """A ViT trained at 32 px (8 x 8 patches) starts one at 16 px (4 x 4): the embeddings are interpolated."""
    small = models.build("vit_tiny_patch4", num_classes=10, in_channels=3, image_size=32)
    torch.save(small.state_dict(), tmp_path / "vit.pt")
    smaller = models.build("vit_tiny_patch4", num_classes=10, in_channels=3, image_size=16)
    source = init_weights.Source(str(tmp_path / "vit.pt"), "file", tmp_path / "vit.pt", "vit.pt")
    record = init_weights.load_into(smaller, source, "vit_tiny_patch4", CLASSES)
    assert record["position_embedding"] == "interpolated from 64 to 16 patches"
    assert torch.equal(smaller.state_dict()["encoder.layers.encoder_layer_0.mlp.0.weight"],
                       small.state_dict()["encoder.layers.encoder_layer_0.mlp.0.weight"])
    assert smaller(torch.rand(2, 3, 16, 16)).shape == (2, 10)


# --------------------------------------------------------------------------- warm-started retraining


@pytest.mark.slow
def test_warm_start_flow_retrains_staging_from_its_weights_and_the_gate_decides(story, prefect_harness):
    """The `warm-start` deployment's flow run: @staging (v1, a LeNet-5) retrained on the embedded digits
    from its own weights; the new version names v1 as its parent; the gate compared the two."""
    from flows.pipeline import zoo_pipeline

    folder = story.root / "warm"
    folder.mkdir()
    (folder / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    overrides = ["train.epochs=2", "train.max_steps_per_epoch=4", "data.limit_per_class=30", "validate.min_per_class=2", "device=cpu",
                 "evaluate.measure_speed=false", "orchestration.retries=0", f"register.model_name={MODEL}",
                 f"mlflow.tracking_uri=sqlite:///{story.root / 'mlflow.db'}", "train.progress=off"]
    with chdir(story.root):
        summary = zoo_pipeline(params_file=str(folder / "params.yaml"), overrides=overrides, workdir=str(folder),
                               warm_start="staging")
    parent = f"models:/{MODEL}/{story.v1}"
    trained = json.loads((folder / "outputs" / "train" / "lenet5" / "train.json").read_text())
    assert trained["init"]["from"] == parent and trained["epochs_run"] == 2
    assert [row["arch"] for row in summary["leaderboard"] if row["status"] == "ok"] == ["lenet5"]  # staging's only
    registered = summary["registered"]
    assert registered["new"] is True
    version = tracking.client(story.pb).get_model_version(MODEL, registered["version"])
    assert version.tags["zooflow.parent_version"] == parent
    promoted = summary["promoted"]
    assert promoted["challenger"] == registered["version"] and promoted["previous"] == story.v1
    assert "staging_val_accuracy" in promoted["metrics"]  # both scored on the current val split


def test_every_deployment_passes_parameters_the_flow_takes():
    """prefect.yaml's parameters, checked against the flow's signature as `prefect deploy` does."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["warm-start"]["parameters"]["warm_start"] == "staging"
    assert deployments["lab"]["entrypoint"] == "flows/experiment.py:zoo_experiment"
    for name, deployment in deployments.items():
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == ("zoo-experiment" if name == "lab" else "zoo-pipeline"), name
        flow.validate_parameters(deployment["parameters"])  # raises on an unknown or ill-typed parameter
