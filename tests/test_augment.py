"""The augment stage and every batched augmentation: shape, dtype, range, per-sample randomness,
reproducibility under a seed, and one property each must keep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks import augment as aug
from tasks.params import AugmentParams, Params
from tasks.readers import load_stats
from tests.test_train import make_data

N, C, H, W = 16, 3, 32, 32
STATS = aug.Stats((0.5, 0.4, 0.3), (0.25, 0.2, 0.3), (0.01, 0.02, 0.05), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))


def batch(seed=0, n=N, c=C):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, H, W), generator=g, dtype=torch.uint8)


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def run(policy: dict, images=None, seed=1, stats=STATS, labels=None):
    images = batch() if images is None else images
    labels = torch.arange(len(images)) % 10 if labels is None else labels
    a = aug.BatchAugmenter(AugmentParams(**policy), stats, 10)
    return a(images, labels, gen(seed))


NONE = {"crop_padding": 0, "hflip": False}

# Every switch, as the smallest policy that turns it on.
SWITCHES = {
    "crop_zeros": {"crop_padding": 4, "hflip": False},
    "crop_reflect": {"crop_padding": 4, "padding_mode": "reflect", "hflip": False},
    "hflip": {**NONE, "hflip": True},
    "brightness": {**NONE, "brightness": 0.4},
    "contrast": {**NONE, "contrast": 0.4},
    "saturation": {**NONE, "saturation": 0.4},
    "hue": {**NONE, "hue": 0.2},
    "pca_lighting": {**NONE, "pca_lighting": 0.1},
    "scale_jitter": {**NONE, "scale_jitter": (1.0, 2.0)},
    "random_resized_crop": {**NONE, "random_resized_crop": (0.3, 1.0)},
    "cutout": {**NONE, "cutout": 8},
    "random_erasing": {**NONE, "random_erasing": 1.0},
    "mixup": {**NONE, "mixup_alpha": 1.0},
    "cutmix": {**NONE, "cutmix_alpha": 1.0},
    "autoaugment": {**NONE, "policy": "autoaugment"},
    "randaugment": {**NONE, "policy": "randaugment"},
    "trivialaugment": {**NONE, "policy": "trivialaugment"},
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_each_switch_shape_range_random_and_reproducible(name):
    policy = SWITCHES[name]
    images = batch()
    x, t = run(policy, images)
    assert x.shape == (N, C, H, W) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    base, _ = run(NONE, images)
    # [0, 1] images normalised by STATS lie within these bounds (erasing adds N(0, 1) noise; lighting shifts)
    lo = ((0 - torch.tensor(STATS.mean)) / torch.tensor(STATS.std)).min() - (6 if name == "random_erasing" else 1)
    hi = ((1 - torch.tensor(STATS.mean)) / torch.tensor(STATS.std)).max() + (6 if name == "random_erasing" else 1)
    assert x.min() >= lo and x.max() <= hi
    # reproducible under a seed, different under another
    x2, t2 = run(policy, images)
    assert torch.equal(x, x2) and torch.equal(t, t2)
    x3, _ = run(policy, images, seed=2)
    assert not torch.equal(x, x3)
    # random per sample: it changes some samples and not all in the same way
    changed = (x - base).flatten(1).abs().amax(1) > 1e-4
    assert changed.any()
    deltas = (x - base).flatten(1)
    assert not all(torch.allclose(deltas[0], deltas[i], atol=1e-4) for i in range(1, N))
    if name in ("mixup", "cutmix"):
        assert t.shape == (N, 10) and t.dtype == torch.float32
        assert torch.allclose(t.sum(1), torch.ones(N))
        assert (t >= 0).all()
    else:
        assert t.dtype == torch.int64 and t.shape == (N,)


def test_flip_is_its_own_inverse():
    x = batch().float()
    g = gen()
    once = aug.random_flip(x, g)
    flipped = (once != x).flatten(1).any(1)
    assert 0 < flipped.sum() < N
    assert torch.equal(torch.where(flipped[:, None, None, None], once.flip(3), once), x)


def test_crop_with_zero_padding_is_identity_and_crops_are_shifts():
    x = batch().float()
    assert torch.equal(aug.random_crop(x, 0, gen()), x)
    y = aug.random_crop(x, 4, gen())
    # each output is the input shifted by one (dy, dx) in [-4, 4]: find it
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(N):
        assert any(torch.equal(padded[i, :, dy : dy + H, dx : dx + W], y[i]) for dy in range(9) for dx in range(9))
    r = aug.random_crop(x, 4, gen(), "reflect")
    assert r.shape == x.shape


def test_normalize_matches_stats_and_uint8_path():
    x = batch()
    out = aug.normalize(x, STATS.mean, STATS.std)
    expect = (x.float() / 255 - torch.tensor(STATS.mean).view(1, 3, 1, 1)) / torch.tensor(STATS.std).view(1, 3, 1, 1)
    assert torch.allclose(out, expect, atol=1e-6)
    same, _ = run(NONE, x)
    assert torch.allclose(same, out, atol=1e-5)


def test_mixup_blends_each_image_and_its_targets_by_the_same_weight():
    ids = torch.arange(N, dtype=torch.float32)
    x = ids.view(N, 1, 1, 1).expand(N, C, H, W).clone()  # image i is the constant i
    t = torch.nn.functional.one_hot(torch.arange(N), N).float()
    mx, mt = aug.mixup(x, t, gen(), 0.4)
    assert torch.allclose(mt.sum(1), torch.ones(N))
    # each blended image is the weighted sum of its labels' images: the same weights for pixels and targets
    assert torch.allclose(mx.mean((1, 2, 3)), mt @ ids, atol=1e-4)
    assert (mx.flatten(1).std(1) < 1e-4).all()  # whole images blended, not patches
    weights = mt.max(1).values
    assert (weights < 0.999).sum() >= N // 2 and weights.std() > 0.01  # it mixed, with a weight per image


def test_cutmix_targets_follow_the_pasted_area():
    x = torch.zeros(N, 1, H, W)
    partners = torch.ones(N, 1, H, W)
    both = torch.cat([x, partners])
    t = torch.nn.functional.one_hot(torch.tensor([0] * N + [1] * N), 2).float()
    mx, mt = aug.cutmix(both, t, gen(), 1.0)
    # for images from the zero half, the area of ones pasted in equals the weight of label 1 ... when the
    # partner came from the ones half; check the general identity: pixel mean == weight of label 1
    assert torch.allclose(mx.flatten(1).mean(1), mt[:, 1], atol=1e-6)


def test_cutout_zeroes_a_square_at_most():
    x = torch.ones(N, C, H, W)
    y = aug.cutout(x, gen(), 8)
    zeros = (y[:, 0] == 0).flatten(1).sum(1)
    assert (zeros <= 64).all() and (zeros > 0).all()
    assert (y[:, 0] == y[:, 1]).all()  # all channels


def test_one_channel_images():
    x, _ = run({"crop_padding": 2, "brightness": 0.2, "saturation": 0.3, "hue": 0.1, "pca_lighting": 0.1, "policy": "randaugment"}, batch(c=1), stats=aug.Stats((0.5,), (0.2,)))
    assert x.shape == (N, 1, H, W) and torch.isfinite(x).all()


def test_compute_stats():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 8, 8, 3)).astype(np.uint8)
    s = aug.compute_stats(images, chunk=7)
    f = images.reshape(-1, 3) / 255
    assert np.allclose(s.mean, f.mean(0)) and np.allclose(s.std, f.std(0))
    assert len(s.eigval) == 3 and np.allclose(np.array(s.eigvec) @ np.diag(s.eigval) @ np.array(s.eigvec).T, np.cov(f.T, bias=True), atol=1e-6)


def test_augment_stage_writes_policy_stats_preview(tmp_path):
    d = make_data(size=16)
    layout = d.layout(tmp_path)
    params = Params.model_validate({"augment": {"preview_images": 16, "padding_mode": "reflect"}})
    summary = aug.augment(params, layout)
    out = layout.augment
    policy = json.loads((out / "policy.json").read_text())
    assert policy["crop_padding"] == 4 and policy["padding_mode"] == "reflect" and policy["hflip"] is True
    stats = json.loads((out / "stats.json").read_text())
    f = d.split("train")[0].reshape(-1, 3) / 255
    assert np.allclose(stats["mean"], f.mean(0)) and np.allclose(stats["std"], f.std(0))
    assert summary["mean"] == stats["mean"]
    img = Image.open(out / "preview.png")
    assert img.mode == "RGB" and min(img.size) >= 64
    assert not list(out.glob(".*tmp"))
    assert load_stats(layout).mean == tuple(stats["mean"])


def test_fused_crop_flip_is_a_crop_then_maybe_a_mirror():
    x = batch().float()
    for mode in ("zeros", "reflect"):
        y = aug.random_crop_flip(x, 4, gen(), mode)
        padded = aug.pad(x, 4, mode)
        mirrored = 0
        for i in range(N):
            crops = [padded[i, :, dy : dy + H, dx : dx + W] for dy in range(9) for dx in range(9)]
            plain = any(torch.equal(cr, y[i]) for cr in crops)
            flipped = any(torch.equal(cr.flip(2), y[i]) for cr in crops)
            assert plain or flipped
            mirrored += flipped and not plain
        assert 0 < mirrored < N
    assert torch.equal(aug.random_crop_flip(x, 0, gen(), flip=False), x)


def test_reflect_pad_matches_torch():
    x = batch().float()
    assert torch.equal(aug.pad(x, 4, "reflect"), torch.nn.functional.pad(x, (4,) * 4, mode="reflect"))
