"""The architecture zoo: shapes, exact parameter counts against the papers, trainability.

Huge ImageNet models are built on the meta device (no memory, no init cost) to count their
parameters and check their output shapes; only small models run real forwards at 224x224.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import models
from models.blocks import count_params

torch.manual_seed(0)


def meta_build(name: str, num_classes: int = 1000, **kw) -> nn.Module:
    with torch.device("meta"):
        return models.build(name, num_classes, **kw)


def n_params(name: str, num_classes: int = 1000, image_size: int = 224, **kw) -> int:
    return count_params(meta_build(name, num_classes, image_size=image_size, **kw))


def test_registry_names_have_metadata():
    names = models.available()
    for required in ("knn", "lenet5", "resnet20", "bayes", "linear", "mlp", "knn_l1"):
        assert required in names
    for info in names.values():
        assert info.year >= 1950 and info.paper and info.scale in ("small", "imagenet", "any")


# ---------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8)
    return x[:1300], torch.tensor(y[:1300]), x[1300:], torch.tensor(y[1300:])


@pytest.mark.parametrize(
    "name, sk",
    [
        ("knn", "KNeighborsClassifier(5)"),
        ("knn_l1", "KNeighborsClassifier(5, p=1)"),
        ("nearest_neighbor", "KNeighborsClassifier(1, p=1)"),
        ("bayes", "GaussianNB()"),
    ],
)
def test_fitted_baselines_match_scikit_learn_and_round_trip(digits, name, sk):
    from sklearn.naive_bayes import GaussianNB  # noqa: F401
    from sklearn.neighbors import KNeighborsClassifier  # noqa: F401

    xtr, ytr, xte, yte = digits
    model = models.build(name, 10, in_channels=1, image_size=8)
    assert models.available()[name].trained_by == "fit"
    model.fit(xtr, ytr)
    scores = model(xte)
    assert scores.shape == (len(xte), 10)
    ref = eval(sk).fit(xtr.flatten(1).numpy(), ytr.numpy()).predict(xte.flatten(1).numpy())
    np.testing.assert_array_equal(scores.argmax(1).numpy(), ref)
    # The fitted state lives in buffers: save with torch.save, reload untrusted-safe into a fresh model.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = models.build(name, 10, in_channels=1, image_size=8)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(xte), scores)


# ---------------------------------------------------------------- parameter counts (anchors)

# (name, kwargs, expected, tolerance as a fraction; 0 = exact) and the source of the figure.
ANCHORS = [
    # LeCun et al. 1998, Sec. II.B: 60,000 trainable parameters (fixed RBF output); + 84x10+10 linear.
    ("lenet5", dict(num_classes=10, in_channels=1, image_size=32, output="rbf"), 60_000, 0),
    ("lenet5", dict(num_classes=10, in_channels=1, image_size=32), 60_850, 0),
    # torchvision resnet.py / He et al. 2015 Table 1 (1000 classes, 224x224).
    ("resnet18", dict(), 11_689_512, 0),
    ("resnet34", dict(), 21_797_672, 0),
    ("resnet50", dict(), 25_557_032, 0),
    ("resnet101", dict(), 44_549_160, 0),
    ("resnet152", dict(), 60_192_808, 0),
    # He et al. 2015 Table 6: 0.27 / 0.46 / 0.66 / 0.85 / 1.7 M (CIFAR-10, option A); 2 significant digits.
    ("resnet20", dict(num_classes=10, image_size=32), 0.27e6, 0.02),
    ("resnet32", dict(num_classes=10, image_size=32), 0.46e6, 0.02),
    ("resnet44", dict(num_classes=10, image_size=32), 0.66e6, 0.02),
    ("resnet56", dict(num_classes=10, image_size=32), 0.85e6, 0.02),
    ("resnet110", dict(num_classes=10, image_size=32), 1.7e6, 0.03),
]


@pytest.mark.parametrize("name, kw, expected, tol", ANCHORS, ids=[f"{a[0]}-{a[2]}" for a in ANCHORS])
def test_parameter_count_matches_paper(name, kw, expected, tol):
    kw = dict(kw)
    num_classes = kw.pop("num_classes", 1000)
    image_size = kw.pop("image_size", 224)
    got = n_params(name, num_classes, image_size=image_size, **kw)
    if tol == 0:
        assert got == expected
    else:
        assert abs(got - expected) <= tol * expected, f"{name}: {got:,} vs {expected:,.0f}"


def test_plain_nets_match_their_resnets():
    # Option A shortcuts are parameter-free: plain-n and ResNet-n have the same weights (He et al. Fig. 6).
    for depth in (20, 56):
        assert n_params(f"plain{depth}", 10, 32) == n_params(f"resnet{depth}", 10, 32)


# ---------------------------------------------------------------- shapes

# Forwarded for real at 224x224 (cheap enough for 2 CPU cores); the rest run on the meta device.
REAL_224 = {"lenet5", "resnet20", "knn", "linear", "bayes"}


@pytest.mark.parametrize("name", sorted(models.available()))
def test_output_shape(name):
    info = models.available()[name]
    sizes = {"small": [32], "imagenet": [224], "any": [32, 224]}[info.scale]
    if name == "lenet5":
        sizes = [32]
    for size in sizes:
        real = size == 32 or name in REAL_224
        device = "cpu" if real else "meta"
        with torch.device(device):
            model = models.build(name, 7, in_channels=3, image_size=size)
            if info.trained_by == "fit":
                model.fit(torch.randn(20, 3, size, size), torch.arange(20) % 7)
            model.eval()
            with torch.no_grad():
                out = model(torch.randn(2, 3, size, size))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7), (name, size)


# ---------------------------------------------------------------- training

# The small variant of each family the digits run trains (bench/zoo_digits.py), with its options.
TRAINABLE = [
    ("lenet5", dict(in_channels=1)),
    ("linear", dict(in_channels=1)),
    ("mlp", dict(in_channels=1)),
    ("resnet20", dict(in_channels=1)),
]


@pytest.mark.parametrize("name, kw", TRAINABLE, ids=[t[0] for t in TRAINABLE])
def test_twenty_steps_halve_the_loss(name, kw):
    torch.manual_seed(0)
    kw = dict(kw)
    in_channels = kw.pop("in_channels", 3)
    model = models.build(name, 10, in_channels=in_channels, image_size=32, **kw)
    x = torch.randn(16, in_channels, 32, 32)
    y = torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()

    def loss_of(out):
        if isinstance(out, tuple):  # GoogLeNet in train mode: (logits, aux...)
            return nn.functional.cross_entropy(out[0], y) + sum(
                model.aux_loss_weight * nn.functional.cross_entropy(a, y) for a in out[1:])
        return nn.functional.cross_entropy(out, y)

    first = None
    for _ in range(20):
        loss = loss_of(model(x))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(x), y).item()
    assert final < first / 2, f"{name}: {first:.3f} -> {final:.3f}"
