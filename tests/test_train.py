"""The train stage on tiny synthetic data: outputs, best-val selection, fit path, aux losses, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import models
from tasks import augment as aug
from tasks import engine
from tasks import train as tr
from tasks.errors import UserError
from tasks.layout import Layout
from tasks.params import Params
from tasks.files import read_json
from tasks.readers import build_model, load_stats, load_trained, write_prepared

# --------------------------------------------------------------------------- tiny stand-ins


@dataclass
class TinyData:
    """Tiny synthetic splits; `layout(root)` writes them under root as a real prepared dataset."""

    splits: dict
    classes: list

    def split(self, name):
        return self.splits[name]

    @property
    def channels(self) -> int:
        return self.splits["train"][0].shape[-1]

    def layout(self, root) -> Layout:
        layout = Layout(root)
        if not (layout.prepared / "meta.json").exists():
            write_prepared(layout.prepared, self.splits, self.classes)
        return layout


def make_data(n_train=96, n_val=32, size=12, classes=4, channels=3, seed=0) -> TinyData:
    """Class k: channel k brightened (class 3: none) on noise; flip- and shift-invariant, learnable
    in a few steps."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 100, size=(n, size, size, channels)).astype(np.uint8)
        for i, k in enumerate(y):
            if k < channels:
                x[i, :, :, k] += 120
        return x, y.astype(np.int64)

    splits = {"train": split(n_train), "val": split(n_val), "test": split(n_val)}
    return TinyData(splits, [str(i) for i in range(classes)])


class TinyCNN(nn.Module):
    def __init__(self, num_classes, in_channels, image_size, width=8, dropout=0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class TinyAux(TinyCNN):
    """GoogLeNet's shape: (logits, aux) in train mode, logits in eval mode."""

    aux_loss_weight = 0.3

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__(num_classes, in_channels, image_size)
        self.aux = nn.Linear(32, num_classes)

    def forward(self, x):
        f = self.features(x)
        if self.training:
            return self.fc(f), self.aux(f)
        return self.fc(f)


class Centroids(models.FittedClassifier):
    """Nearest class mean: fitted once, its memory sized by the data."""

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("centres", torch.zeros(0))
        self.fitted_on = 0

    def fit(self, x, y):
        flat = x.flatten(1)
        self.centres = torch.stack([flat[y == k].mean(0) for k in range(self.num_classes)])

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.centres)


def register_test_models() -> None:
    """The test-only architectures (test_train_resume's subprocess registers them for good)."""
    models.register("Test", 2024, "a test", name="test_tiny")(TinyCNN)
    models.register("Test", 2024, "a test", name="test_aux")(TinyAux)
    models.register("Test", 2024, "a test", name="test_centroids", trained_by="fit")(Centroids)


@pytest.fixture(autouse=True)
def registered_test_models():
    """Registered for each test of this module only, so they never leak into tests that walk the
    registry (tests/test_zoo.py builds every registered name)."""
    with models.temporary_registrations():
        register_test_models()
        yield


@pytest.fixture
def data():
    return make_data()


def make_params(arch="test_tiny", **train) -> Params:
    base = {"epochs": 3, "batch_size": 16, "progress": "off", "architectures": [arch]}
    base.update(train)
    return Params.model_validate({"device": "cpu", "train": base})


# --------------------------------------------------------------------------- tests


def test_train_writes_outputs_and_learns(tmp_path, data):
    layout = data.layout(tmp_path)
    logged = []
    summary = tr.train(make_params(epochs=4, optimizer={"lr": 0.1}), layout, "test_tiny", log=lambda m, s: logged.append((s, m)))
    out = layout.train("test_tiny")
    for name in ("model.pt", "checkpoint.pt", "history.json", "train.json", "curves.png"):
        assert (out / name).exists(), name
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 4 and [s for s, _ in logged] == [0, 1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s"} <= set(history[0])
    assert summary["best_val_acc"] == max(h["val_acc"] for h in history)
    assert summary["best_epoch"] == max(range(4), key=lambda i: (history[i]["val_acc"], -i))
    assert summary["best_val_acc"] > 0.5
    assert summary["device"] == "cpu" and summary["params"] > 0
    # model.pt is the best-val weights, loadable without unpickling code
    model = load_trained(layout, "test_tiny")
    assert not model.training
    _, val = torch.tensor(0), data.split("val")
    x = aug.normalize(aug.to_nchw(val[0]), *(lambda s: (s.mean, s.std))(load_stats(layout)))
    acc = (model(x).argmax(1).numpy() == val[1]).mean()
    assert acc == pytest.approx(summary["best_val_acc"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["best"]["epoch"] == summary["best_epoch"]


def test_same_seed_same_weights(tmp_path, data):
    params = make_params(epochs=2)
    a = tr.train(params, data.layout(tmp_path / "a"), "test_tiny")
    b = tr.train(params, data.layout(tmp_path / "b"), "test_tiny")
    assert a["best_val_acc"] == b["best_val_acc"]
    wa = torch.load(tmp_path / "a/outputs/train/test_tiny/checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b/outputs/train/test_tiny/checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fit_path(tmp_path, data):
    layout = data.layout(tmp_path)
    summary = tr.train(make_params("test_centroids"), layout, "test_centroids")
    assert summary["trained_by"] == "fit" and summary["best_val_acc"] > 0.9
    model = load_trained(layout, "test_centroids")
    assert model.centres.shape == (4, 3 * 12 * 12)


def test_aux_losses(tmp_path, data):
    out = (torch.zeros(2, 3), torch.zeros(2, 3))
    loss, main = engine.model_loss(TinyAux(3, 3, 8), out, torch.tensor([0, 1]), 0.0)
    assert loss.item() == pytest.approx(1.3 * np.log(3), rel=1e-5) and main is out[0]
    # in training the auxiliary head learns from its own loss: its weights leave their initial values
    layout = data.layout(tmp_path)
    tr.train(make_params("test_aux", epochs=2), layout, "test_aux")
    engine.seed_everything(0)
    start = build_model("test_aux", read_json(layout.train("test_aux") / "train.json")["model"]).state_dict()
    end = torch.load(layout.train("test_aux") / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(start["aux.weight"], end["aux.weight"])
    model = load_trained(layout, "test_aux")
    assert model(torch.zeros(2, 3, 12, 12)).shape == (2, 4)  # eval mode: the main logits alone


def test_rerun_resumes_and_changed_params_restart(tmp_path, data):
    layout = data.layout(tmp_path)
    tr.train(make_params(epochs=2), layout, "test_tiny")
    again = tr.train(make_params(epochs=2), layout, "test_tiny")
    assert again["resumed_from_epoch"] == 2 and again["epochs_run"] == 2
    fresh = tr.train(make_params(epochs=2, optimizer={"lr": 0.01}), layout, "test_tiny")
    assert fresh["resumed_from_epoch"] is None


def test_pick_device():
    assert engine.pick_device("cpu").type == "cpu"
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert engine.pick_device("auto").type == expected


def test_memory_mapped_placement_and_log_lines(tmp_path, data, capsys):
    summary = tr.train(make_params(epochs=2, data_placement="mmap", progress="log"), data.layout(tmp_path), "test_tiny")
    assert summary["epochs_run"] == 2
    err = capsys.readouterr().err
    assert err.count("[train test_tiny] epoch") == 2 and "val_acc" in err and "img/s" in err


def test_progress_bar_mode(tmp_path, data, capsys):
    tr.train(make_params(epochs=1, progress="bar"), data.layout(tmp_path), "test_tiny")
    err = capsys.readouterr().err
    assert "test_tiny 1/1" in err  # the tqdm bar's description


def test_unknown_device_is_clear():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="device: cuda was asked for, but torch sees no CUDA device"):
        engine.pick_device("cuda")


@pytest.mark.parametrize("arch", ["knn", "lenet5"])
def test_real_zoo_architectures_train_and_reload(tmp_path, arch):
    """The registry's own models through the engine: the fit path and a plain CNN. (GoogLeNet's
    (logits, aux2, aux1) contract is covered by TinyAux: the real one costs a minute on 2 cores.)"""
    if arch not in models.available():
        pytest.skip(f"{arch} not in this zoo")
    d = make_data(n_train=24, n_val=8, size=32, channels=1 if arch == "lenet5" else 3)
    options = {"googlenet": {"variant": "imagenet"}}.get(arch, {})
    params = make_params(arch, epochs=1, batch_size=8, max_steps_per_epoch=1, model_options={arch: options})
    layout = d.layout(tmp_path)
    summary = tr.train(params, layout, arch)
    assert summary["best_epoch"] == 0
    model = load_trained(layout, arch)
    saved = torch.load(layout.train(arch) / "model.pt", weights_only=True)
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # the weights, reloaded exactly
    stats = load_stats(layout)
    x = aug.normalize(aug.to_nchw(d.split("val")[0]), stats.mean, stats.std)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (8, 4)
    assert float((out.argmax(1).numpy() == d.split("val")[1]).mean()) == pytest.approx(summary["best_val_acc"])


def test_a_huge_val_loss_is_divergence_only_when_no_epoch_brings_it_back():
    """A deep BN net's first eval (running statistics behind the weights) can read a val loss of millions
    and then settle: that run trains on. An MLP at lr 1000 whose every epoch reads so is diverged."""
    k = 10
    plain56 = [{"epoch": 0, "train_loss": 2.3, "val_loss": 2.86e6, "val_acc": 0.105},
               {"epoch": 1, "train_loss": 2.2, "val_loss": 72.5, "val_acc": 0.105},
               {"epoch": 2, "train_loss": 2.0, "val_loss": 2.8, "val_acc": 0.19}]
    for row in plain56:
        engine.check_diverged(row, k)
    engine.check_kept({"epoch": 2, "val_acc": 0.19, "val_loss": 2.8}, k)
    engine.check_diverged({"epoch": 0, "train_loss": 2.3, "val_loss": 1.4e7, "val_acc": 0.1}, k)
    with pytest.raises(engine.TrainingDiverged, match=r"diverged at epoch 1 \(val loss, at its best epoch 1.4e\+07\)"):
        engine.check_kept({"epoch": 0, "val_acc": 0.1, "val_loss": 1.4e7}, k)
    for bad in ({"train_loss": float("nan")}, {"train_loss": 1e5}, {"val_loss": float("inf")}):
        with pytest.raises(engine.TrainingDiverged):
            engine.check_diverged({"epoch": 3, "train_loss": 2.0, "val_loss": 2.0, **bad}, k)
