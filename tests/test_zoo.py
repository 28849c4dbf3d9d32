"""The architecture zoo: names, faces, exact parameter counts against the papers, the papers'
formulas, trainability.

Huge ImageNet models are built on the meta device (no memory, no init cost) to count their
parameters and check their output shapes; only small models run real forwards at 224x224.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import models
from models.blocks import count_params

torch.manual_seed(0)


def meta_build(name: str, num_classes: int = 1000, **kw) -> nn.Module:
    with torch.device("meta"):
        return models.build(name, num_classes, **kw)


def n_params(name: str, num_classes: int = 1000, image_size: int = 224, **kw) -> int:
    """Trainable parameters, counted on the meta device."""
    return count_params(meta_build(name, num_classes, image_size=image_size, **kw))


def test_registry_names_have_metadata():
    names = models.available()
    for required in ("knn", "lenet5", "resnet20", "bayes", "linear", "mlp", "knn_l1", "nin", "find_s",
                     "candidate_elimination", "googlenet_torchvision"):
        assert required in names
    for info in names.values():
        assert info.year >= 1950 and info.paper and info.scale in ("small", "imagenet", "any")
        assert info.in_channels in (1, 3)
    assert names["lenet5"].in_channels == 1  # the paper's greyscale digits


def test_every_variant_is_written_out():
    """`grep -rn resnet56 models/` finds it: every registered name is written in the source of
    models/, as its builder's name or a quoted string, not assembled by an f-string in a loop."""
    source = "\n".join(p.read_text() for p in Path(models.__file__).parent.glob("*.py"))
    missing = [n for n in models.available() if not re.search(rf"\bdef {n}\(|[\"']{n}[\"']", source)]
    assert not missing, missing


def test_temporary_registrations_are_forgotten():
    before = set(models.available())
    with models.temporary_registrations():
        models.register("Test", 2024, "a test", name="test_scratch")(lambda num_classes, **_: nn.Linear(1, num_classes))
        assert "test_scratch" in models.available()
    assert set(models.available()) == before


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


def test_concept_learning_recovers_a_conjunction():
    """Mitchell ch. 2 on a noise-free toy: nine boolean pixels (a 3x3 image, +-1 so the threshold 0
    splits them), every one of the 512 instances once; class 1 is the conjunction x0 = 1 and x3 = 0,
    class 0 every other instance (no conjunction: its version space collapses)."""
    import itertools

    bits = torch.tensor(list(itertools.product([0, 1], repeat=9)), dtype=torch.float32)
    x = (bits * 2 - 1).view(-1, 1, 3, 3)
    y = ((bits[:, 0] == 1) & (bits[:, 3] == 0)).long()
    ones, zeros = torch.zeros(9, dtype=torch.bool), torch.zeros(9, dtype=torch.bool)
    ones[0], zeros[3] = True, True
    for name in ("find_s", "candidate_elimination"):
        model = models.build(name, 2, in_channels=1, image_size=3)
        model.fit(x, y)
        assert torch.equal(model.specific_ones[1], ones) and torch.equal(model.specific_zeros[1], zeros)
        assert torch.equal(model(x).argmax(1), y), name
    # Candidate elimination: G has converged to S, the concept itself; class 0 has collapsed.
    assert model.general_count.tolist() == [0, 1] and model.collapsed.tolist() == [True, False]
    assert torch.equal(model.general_ones[1, 0], ones) and torch.equal(model.general_zeros[1, 0], zeros)
    # One mislabelled example: no conjunction is consistent any more, the class falls back to S.
    noisy = y.clone()
    noisy[0] = 1  # the all-zero instance (x0 = 0) labelled as the concept
    model.fit(x, noisy)
    assert model.collapsed.tolist() == [True, True]
    assert (model(x).argmax(1) == y).float().mean() > 0.7


# ---------------------------------------------------------------- parameter counts (anchors)

# (name, kwargs, expected, tolerance as a fraction; 0 = exact) and the source of the figure.
# Default kwargs: 1000 classes at 224x224. "M" figures are checked to the digits the source gives.
ANCHORS = [
    # LeCun et al. 1998, Sec. II.B: 60,000 trainable parameters (fixed RBF output); + 84x10+10 linear.
    ("lenet5", dict(num_classes=10, in_channels=1, image_size=32, output="rbf"), 60_000, 0),
    ("lenet5", dict(num_classes=10, in_channels=1, image_size=32), 60_850, 0),
    # Krizhevsky et al. 2012 (two towers) / one tower; torchvision's alexnet ("one weird trick").
    ("alexnet", dict(groups=2), 60_965_224, 0),
    ("alexnet", dict(), 62_378_344, 0),
    ("alexnet_torchvision", dict(), 61_100_840, 0),
    # Zeiler & Fergus 2013 Fig. 3: 96 7x7/2, 256 5x5/2, 384, 384, 256 3x3, 4096, 4096, 1000, summed.
    ("zfnet", dict(), 96 * 3 * 49 + 96 + 256 * 96 * 25 + 256 + 384 * 256 * 9 + 384 + 384 * 384 * 9 + 384
     + 256 * 384 * 9 + 256 + 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000, 0),
    # Lin et al. 2013, the CIFAR-10 NIN: conv 5x5 192, 1x1 160, 1x1 96 | 5x5 192, 1x1 192, 1x1 192 |
    # 3x3 192, 1x1 192, 1x1 10, with biases, summed.
    ("nin", dict(num_classes=10, image_size=32), 3 * 25 * 192 + 192 + 192 * 160 + 160 + 160 * 96 + 96
     + 96 * 25 * 192 + 192 + 2 * (192 * 192 + 192) + 192 * 9 * 192 + 192 + 192 * 192 + 192 + 192 * 10 + 10, 0),
    # torchvision vgg.py (Simonyan & Zisserman Table 2: 138 M / 144 M).
    ("vgg16", dict(), 138_357_544, 0),
    ("vgg19", dict(), 143_667_240, 0),
    # Szegedy et al. Table 1 with real 5x5 convs (BN after each conv, as torchvision): without /
    # with the two auxiliary classifiers; torchvision googlenet.py (its "5x5" is a 3x3).
    ("googlenet", dict(aux_logits=False), 7_005_832, 0),
    ("googlenet", dict(), 13_385_816, 0),
    ("googlenet_torchvision", dict(aux_logits=False), 6_624_904, 0),
    ("googlenet_torchvision", dict(), 13_004_888, 0),
    # torchvision resnet.py / He et al. 2015 Table 1.
    ("resnet18", dict(), 11_689_512, 0),
    ("resnet34", dict(), 21_797_672, 0),
    ("resnet50", dict(), 25_557_032, 0),
    ("resnet101", dict(), 44_549_160, 0),
    ("resnet152", dict(), 60_192_808, 0),
    # He et al. 2015 Table 6: 0.27 / 0.46 / 0.66 / 0.85 / 1.7 M (CIFAR-10, option A).
    ("resnet20", dict(num_classes=10, image_size=32), 0.27e6, 0.02),
    ("resnet32", dict(num_classes=10, image_size=32), 0.46e6, 0.02),
    ("resnet44", dict(num_classes=10, image_size=32), 0.66e6, 0.02),
    ("resnet56", dict(num_classes=10, image_size=32), 0.85e6, 0.02),
    ("resnet110", dict(num_classes=10, image_size=32), 1.7e6, 0.03),
    # He et al. 2016 (identity mappings) Table 3: PreAct-ResNet-164, 1.7 M.
    ("preact_resnet164", dict(num_classes=10, image_size=32), 1.7e6, 0.03),
    # Zagoruyko & Komodakis Table 6: WRN-28-10 36.5 M; 36,479,194 in xternalz/WideResNet-pytorch.
    ("wrn28_10", dict(num_classes=10, image_size=32), 36_479_194, 0),
    # Xie et al. 2017 Table 7: ResNeXt-29 8x64d 34.4 M, 16x64d 68.1 M; torchvision resnext50_32x4d.
    ("resnext29_8x64d", dict(num_classes=10, image_size=32), 34.4e6, 0.002),
    ("resnext29_16x64d", dict(num_classes=10, image_size=32), 68.1e6, 0.002),
    ("resnext50_32x4d", dict(), 25_028_904, 0),
    # Huang et al. 2016: stochastic depth drops blocks, adds no parameters: ResNet-110's.
    ("resnet110_sd", dict(num_classes=10, image_size=32), 1_727_962, 0),
    # Hu et al.: SE-ResNet-110 1,744,952 (moskomule/senet.pytorch); SE-ResNet-50 28.09 M (Table 2: 28.1 M).
    ("se_resnet110", dict(num_classes=10, image_size=32), 1_744_952, 0),
    ("se_resnet50", dict(), 28.1e6, 0.002),
    # Huang et al. 2017 Table 2: DenseNet-BC (L=100, k=12) 0.8 M; torchvision densenet121.
    ("densenet_bc_100_12", dict(num_classes=10, image_size=32), 0.8e6, 0.04),
    ("densenet121", dict(), 7_978_856, 0),
    # Howard et al. 2017 Table 8: 1.0 MobileNet-224, 4.2 M.
    ("mobilenet_v1", dict(), 4.2e6, 0.012),
    # torchvision efficientnet.py (Tan & Le Table 2: 5.3 M).
    ("efficientnet_b0", dict(), 5_288_548, 0),
    # torchvision vision_transformer.py (Dosovitskiy et al. Table 1: 86 M).
    ("vit_b_16", dict(), 86_567_656, 0),
    # Dai et al. 2021 Table 3: CoAtNet-0 25 M, CoAtNet-1 42 M.
    ("coatnet_0", dict(), 25e6, 0.02),
    ("coatnet_1", dict(), 42e6, 0.012),
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


# ---------------------------------------------------------------- faces

# Built and run for real below this many parameters; bigger ones run on the meta device, which
# checks every shape without memory or arithmetic (the whole file must run in minutes on 2 cores).
REAL_LIMIT = 3_000_000


@pytest.mark.parametrize("name", sorted(models.available()))
def test_faces(name):
    """timm's faces on every variant, at every size it is defined for (32x32 and/or 224x224), 5
    classes, its paper's input channels: forward_features, forward_head with and without
    pre_logits, num_features, get_classifier, reset_classifier(7).

    Variants of at most REAL_LIMIT parameters run for real at 32x32, in eval mode, and there
    forward(x) == forward_head(forward_features(x)) is checked value for value; ImageNet-scale
    variants and every 224x224 build run on the meta device, which checks the shapes only.
    Fitted models (kNN, Bayes, concept learning) are fitted on 20 random 32x32 images first (their
    cost is the data's, and test_real_forward_at_224 runs kNN and Bayes at 224), and their
    data-shaped state reloads into a fresh model with plain load_state_dict.
    """
    info = models.available()[name]
    fitted = info.trained_by == "fit"
    sizes = [32] if fitted else {"small": [32], "imagenet": [224], "any": [32, 224]}[info.scale]
    c = info.in_channels
    for size in sizes:
        real = fitted or (size == 32 and n_params(name, 5, image_size=size, in_channels=c) <= REAL_LIMIT)
        with torch.device("cpu" if real else "meta"):
            model = models.build(name, 5, in_channels=c, image_size=size)
            x = torch.randn(2, c, size, size)
            if fitted:
                model.fit(torch.randn(20, c, size, size), torch.arange(20) % 5)
            model.eval()
            with torch.no_grad():
                out = model(x)
                features = model.forward_features(x)
                logits = model.forward_head(features)
                pooled = model.forward_head(features, pre_logits=True)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 5), (name, size)
        assert features.dim() in (2, 3, 4) and features.shape[0] == 2
        assert isinstance(model.num_features, int) and pooled.shape == (2, model.num_features), (name, size)
        assert isinstance(model.get_classifier(), nn.Module)
        if real:
            torch.testing.assert_close(logits, out, rtol=0, atol=0, equal_nan=True)
        if fitted:
            fresh = models.build(name, 5, in_channels=c, image_size=size)
            fresh.load_state_dict(model.state_dict())
            torch.testing.assert_close(fresh.eval()(x), out)
            with pytest.raises(NotImplementedError, match="fit"):
                model.reset_classifier(7)
            continue
        model.reset_classifier(7)
        with torch.no_grad():
            assert model.forward_head(features).shape == (2, 7), (name, size)
        assert model.get_classifier() is model.get_submodule(model.classifier_path)


@pytest.mark.parametrize("name, kw", [("mobilenet_v1", dict(alpha=0.25)), ("efficientnet_b0", {}), ("knn", {}),
                                      ("bayes", {})])
def test_real_forward_at_224(name, kw):
    model = models.build(name, 5, in_channels=3, image_size=224, **kw)
    if models.available()[name].trained_by == "fit":
        model.fit(torch.randn(8, 3, 224, 224), torch.arange(8) % 5)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 5)


def test_small_inputs_get_small_stems():
    # A 32x32 image through an ImageNet stem would reach the last stage at 1x1.
    assert isinstance(models.build("resnet50", 10, image_size=32).maxpool, nn.Identity)
    assert not isinstance(meta_build("resnet50", image_size=224).maxpool, nn.Identity)
    assert not isinstance(meta_build("resnet50", image_size=32, variant="imagenet").maxpool, nn.Identity)
    with pytest.raises(ValueError, match="lenet5"):
        models.build("lenet5", 10, image_size=224)


# ---------------------------------------------------------------- family behaviour


def test_googlenet_aux_outputs_only_in_training():
    model = models.build("googlenet", 10, in_channels=1, image_size=32, variant="imagenet", width=0.25)
    assert model.aux_loss_weight == 0.3
    x = torch.randn(2, 1, 32, 32)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 10) for o in out)
    model.reset_classifier(7)  # the auxiliary classifiers too
    assert all(o.shape == (2, 7) for o in model(x))
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_googlenet_is_the_papers():
    """Table 1's 5x5 convs in the third branch, dropout 0.4 before the classifier (Sec. 5), and
    auxiliary classifiers with their own dropout 0.7 and loss weight 0.3."""
    model = meta_build("googlenet")
    for name in ("inception3a", "inception4e", "inception5b"):
        assert getattr(model, name).branch3[1].conv.kernel_size == (5, 5)
        assert getattr(model, name).branch2[1].conv.kernel_size == (3, 3)
    assert model.dropout.p == 0.4
    assert model.aux1.dropout.p == 0.7 and model.aux2.dropout.p == 0.7 and model.aux_loss_weight == 0.3
    assert meta_build("googlenet_torchvision").inception3a.branch3[1].conv.kernel_size == (3, 3)


def test_googlenet_torchvision_is_torchvisions():
    """Module for module and value for value: torchvision's weights load into it unchanged."""
    from torchvision.models import googlenet as tv_googlenet

    torch.manual_seed(0)
    theirs = tv_googlenet(weights=None, aux_logits=True, init_weights=False).eval()
    ours = models.build("googlenet_torchvision", 1000, image_size=224).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_local_response_norm_is_the_papers():
    """Krizhevsky et al. Sec. 3.3: b_i = a_i / (k + alpha sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2)^beta,
    k = 2, n = 5, alpha = 1e-4, beta = 0.75, computed by hand (alpha not divided by n)."""
    torch.manual_seed(0)
    a = torch.randn(1, 8, 2, 3) * 30  # large activations, so alpha matters
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = torch.empty_like(a)
    for i in range(a.shape[1]):
        window = a[:, max(0, i - n // 2) : min(a.shape[1], i + n // 2 + 1)]
        expected[:, i] = a[:, i] / (k + alpha * (window**2).sum(1)) ** beta
    for name in ("alexnet", "zfnet"):
        lrns = [m for m in models.build(name, 10, image_size=32, width=0.1, hidden=8).modules()
                if isinstance(m, nn.LocalResponseNorm)]
        assert len(lrns) == 2
        for lrn in lrns:
            torch.testing.assert_close(lrn(a), expected)


def test_bottleneck_residual_hook():
    """SE and stochastic depth change only the bottleneck's residual branch; the bottleneck itself
    computes exactly torchvision's."""
    from torchvision.models.resnet import Bottleneck as TVBottleneck

    from models.resnet import Bottleneck
    from models.senet import SEBottleneck
    from models.stochastic_depth import StochasticBottleneck

    for block in (SEBottleneck, StochasticBottleneck):
        assert block.forward is Bottleneck.forward and "residual" in vars(block)
    torch.manual_seed(0)
    ours, theirs = Bottleneck(64, 16).eval(), TVBottleneck(64, 16).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))
    assert isinstance(meta_build("resnet50").layer1[0], Bottleneck)


def test_nin_has_no_fully_connected_layer():
    """Lin et al.: global average pooling of one map per class is the classifier (Sec. 3.2)."""
    model = models.build("nin", 10)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)][::3] == [(5, 5), (5, 5), (3, 3)]
    x = torch.randn(2, 3, 32, 32)
    features = model.eval().forward_features(x)
    assert features.shape == (2, 192, 8, 8)  # 32 -> 16 -> 8, pools rounding up
    class_maps = torch.relu(model.classifier(features))
    torch.testing.assert_close(model(x), class_maps.mean((2, 3)))
    assert n_params("nin", 10, image_size=32, width=0.5) < n_params("nin", 10, image_size=32) / 3
    with torch.no_grad():  # the BN option (not in the paper): a BN before every ReLU of the mlpconvs
        bn = models.build("nin", 10, width=0.25, batch_norm=True).eval()
        assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 8 and bn(x).shape == (2, 10)


def test_stochastic_depth_is_the_identity_schedule_in_eval():
    torch.manual_seed(0)
    sd = models.build("resnet20_sd", 10)
    drops = [b.stochastic_depth.p for layer in (sd.layer1, sd.layer2, sd.layer3) for b in layer]
    assert drops == pytest.approx([0.5 * i / 9 for i in range(1, 10)])  # linear decay to p_L = 0.5
    plain = models.build("resnet20", 10)
    plain.load_state_dict(sd.state_dict())
    x = torch.randn(4, 3, 32, 32)
    sd.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(sd(x), plain(x))  # every block used at test time
        sd.train()
        outs = {tuple(sd(x).flatten()[:4].tolist()) for _ in range(6)}
    assert len(outs) > 1  # and blocks really are dropped in training


def test_deformable_resnet_equals_its_resnet_at_init():
    torch.manual_seed(0)
    base = models.build("resnet20", 10)
    deform = models.build("deform_resnet20", 10)
    state = {}
    for key, value in base.state_dict().items():
        if key in ("layer3.1.conv2.weight", "layer3.2.conv1.weight", "layer3.2.conv2.weight"):
            key = key.replace(".weight", ".conv.weight")
        state[key] = value
    missing, unexpected = deform.load_state_dict(state, strict=False)
    assert not unexpected and all(".offset." in k for k in missing)
    base.eval(), deform.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deform(x), base(x), atol=1e-5, rtol=1e-4)


def test_lenet_c3_connection_table():
    from models.lenet import C3Convolution

    c3 = C3Convolution()
    dense = c3.dense_weight()
    connected = dense.abs().sum((2, 3)) > 0
    assert connected.sum() == 60  # Table I: 60 of the 16 x 6 links
    assert connected[15].all() and connected[0].tolist() == [True, True, True, False, False, False]


def test_catalogue_rows():
    from models.catalogue import catalogue

    rows = {r["name"]: r for r in catalogue(names=["resnet20", "resnet18", "vit_b_16", "knn", "lenet5"])}
    assert rows["resnet18"]["params"] == 11_689_512 and rows["resnet18"]["design_size"] == 224
    assert rows["resnet18"]["flops_224"] == pytest.approx(2 * 1.82e9, rel=0.01)  # 1.8 GFLOPs (MACs), Table 1
    assert rows["resnet20"]["flops_224"] is None and rows["resnet20"]["flops_32"] > 0
    assert (rows["resnet20"]["design_size"], rows["resnet20"]["design_classes"]) == (32, 10)
    assert rows["vit_b_16"]["flops_32"] is None
    assert rows["knn"]["flops_32"] is None
    # LeNet-5 counted with the paper's one input channel: 60,850 (LeCun et al. 1998), not 61,150.
    assert rows["lenet5"]["in_channels"] == 1 and rows["lenet5"]["params"] == 60_850
    assert set(rows["resnet20"]) >= {"name", "family", "year", "paper", "scale", "in_channels", "params",
                                     "design_size", "design_classes", "flops_32", "flops_224"}


# ---------------------------------------------------------------- training

def _digits_recipes() -> dict:
    """params.yaml's architectures with their model_options and recipes, through the digits bench's
    reader (one source for the pipeline, the bench and these tests)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "zoo_digits.py"
    spec = importlib.util.spec_from_file_location("zoo_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.recipes()


PARAMS_ZOO = _digits_recipes()
TRAINABLE = [(n, dict(r["options"], in_channels=1)) for n, r in PARAMS_ZOO.items()
             if models.available()[n].trained_by == "sgd"]


@pytest.mark.parametrize("name", list(PARAMS_ZOO))
def test_params_yaml_zoo_builds_at_the_digits_size(name):
    """Every architecture of params.yaml's train.architectures, with its train.model_options, at the
    embedded digits' size (32x32, 1 channel, 10 classes): one forward pass (fitted ones fitted first)."""
    torch.manual_seed(0)
    model = models.build(name, 10, in_channels=1, image_size=32, **PARAMS_ZOO[name]["options"])
    if models.available()[name].trained_by == "fit":
        model.fit(torch.randn(20, 1, 32, 32), torch.arange(20) % 10)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# Adam's step size for the twenty steps: smaller for the nets without BN (AlexNet, ZFNet), larger for
# stochastic depth, which trains a random half of its blocks at each step.
STEP_LR = {"alexnet": 1e-3, "zfnet": 1e-3, "resnet20_sd": 1e-2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two intra-op threads on a CPU shared with other jobs wait on each other (up to 10x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name, kw", TRAINABLE, ids=[t[0] for t in TRAINABLE])
def test_twenty_steps_halve_the_loss(name, kw):
    torch.manual_seed(0)
    kw = dict(kw)
    in_channels = kw.pop("in_channels", 3)
    model = models.build(name, 10, in_channels=in_channels, image_size=32, **kw)
    x = torch.randn(16, in_channels, 32, 32)
    y = torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=STEP_LR.get(name, 3e-3))
    model.train()

    def loss_of(out):
        if isinstance(out, tuple):  # GoogLeNet in train mode: (logits, aux...)
            return nn.functional.cross_entropy(out[0], y) + sum(
                model.aux_loss_weight * nn.functional.cross_entropy(a, y) for a in out[1:])
        return nn.functional.cross_entropy(out, y)

    def main_loss():
        # The classifier's own loss in train mode (BN on batch statistics), without the noise of
        # dropout and stochastic depth.
        noisy = [m for m in model.modules() if isinstance(m, (nn.Dropout, StochasticDepth))]
        for m in noisy:
            m.eval()
        with torch.no_grad():
            out = model(x)
        for m in noisy:
            m.train()
        return nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y).item()

    first = main_loss()
    for _ in range(20):
        loss = loss_of(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = main_loss()
    assert final < first / 2, f"{name}: {first:.3f} -> {final:.3f}"
