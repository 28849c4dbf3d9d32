"""The augment stage and the batched augmenter the trainer runs on its device.

The stage (`augment`) reads the train split once and writes `data/augment/`: the policy as JSON, the
normalisation statistics (per-channel mean/std in [0, 1] units and the RGB covariance's eigenpairs
for AlexNet's PCA lighting) and a preview grid of augmented training images.

The augmenter (`BatchAugmenter`) is airbench's loader idea: the uint8 dataset sits on the training
device and every op below works on a whole batch at once, with per-sample randomness drawn from one
`torch.Generator` — no PIL, no per-image Python. The one documented exception is policy augmentation
(AutoAugment / RandAugment / TrivialAugmentWide from `torchvision.transforms.v2`), applied per sample.

Order of the ops in a batch:
    policy (uint8) -> to [0, 1] float -> random resized crop / scale jitter -> padded crop -> flip
    -> colour jitter -> PCA lighting -> normalise -> cutout / random erasing -> mixup / cutmix
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.files import atomic_path, write_json
from tasks.layout import Layout
from tasks.readers import load_prepared
from tasks.params import AugmentParams, Params


# --------------------------------------------------------------------------- layout


def to_nchw(images: np.ndarray | Tensor) -> Tensor:
    """uint8 NHWC (numpy, possibly memory-mapped) -> contiguous uint8 NCHW tensor."""
    if isinstance(images, np.ndarray):
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # a read-only memory map: torch wants memory it may write
            images = images.copy()
        images = torch.from_numpy(images)
    if images.ndim == 3:  # N, H, W: one channel
        images = images.unsqueeze(-1)
    return images.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    """Per-channel mean/std in [0, 1] units, and the RGB covariance's eigenpairs (PCA lighting)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    eigval: tuple[float, ...] = ()
    eigvec: tuple[tuple[float, ...], ...] = ()

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "eigval": list(self.eigval), "eigvec": [list(r) for r in self.eigvec]}

    @classmethod
    def from_json(cls, data: dict) -> Stats:
        return cls(
            tuple(data["mean"]),
            tuple(data["std"]),
            tuple(data.get("eigval", ())),
            tuple(tuple(r) for r in data.get("eigvec", ())),
        )


def compute_stats(images: np.ndarray | Tensor, chunk: int = 4096) -> Stats:
    """Stats of a uint8 NHWC split, streamed in chunks (works on a memory-mapped array)."""
    n = len(images)
    channels = images.shape[-1] if images.ndim == 4 else 1
    total = np.zeros(channels, np.float64)
    outer = np.zeros((channels, channels), np.float64)
    count = 0
    for start in range(0, n, chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64).reshape(-1, channels) / 255.0
        total += block.sum(0)
        outer += block.T @ block
        count += len(block)
    mean = total / max(count, 1)
    cov = outer / max(count, 1) - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval, 0, None)
    return Stats(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        tuple(float(v) for v in eigval),
        tuple(tuple(float(v) for v in row) for row in eigvec),
    )


def normalize(images: Tensor, mean: Any, std: Any) -> Tensor:
    """uint8 NCHW -> float32 NCHW, (x / 255 - mean) / std per channel: the eval path."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() * (1 / 255.0) - mean_t) / std_t


# --------------------------------------------------------------------------- batched ops


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def pad(x: Tensor, padding: int, mode: str = "zeros") -> Tensor:
    """Pad the last two dims by `padding`: zeros, or mirrored ("reflect", any dtype, uint8 included)."""
    if mode == "zeros":
        return F.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    if padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than {padding} pixels")
    rows = _reflect_index(h, padding, x.device)
    cols = _reflect_index(w, padding, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _reflect_index(n: int, padding: int, device) -> Tensor:
    i = torch.arange(-padding, n + padding, device=device).abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def random_crop(x: Tensor, padding: int, g: torch.Generator, mode: str = "zeros") -> Tensor:
    """Pad by `padding` and take a random crop of the original size, one offset per sample.

    The (2p+1)^2 candidate crops are a strided view of the padded batch (`unfold`, no copy); one
    advanced index picks each sample's window. Works on uint8 as well as float."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    windows = pad(x, padding, mode).unfold(2, h, 1).unfold(3, w, 1)  # n, c, 2p+1, 2p+1, h, w
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    return windows.permute(0, 2, 3, 1, 4, 5)[torch.arange(n, device=x.device), dy, dx]


def random_crop_flip(x: Tensor, padding: int, g: torch.Generator, mode: str = "zeros", flip: bool = True) -> Tensor:
    """Random crop with padding and random horizontal flip as one gather: each output pixel's source
    index in the padded batch is computed (offset, mirrored column), and one `gather` moves the
    bytes. Twice as fast as a crop then a flip on CPU; any dtype."""
    n, c, h, w = x.shape
    dev = x.device
    padded = pad(x, padding, mode) if padding > 0 else x
    width = w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=g, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=g, device=dev)
    j = torch.arange(w, device=dev).view(1, 1, w)
    if flip:
        mirrored = torch.rand(n, 1, 1, generator=g, device=dev) < 0.5
        j = torch.where(mirrored, w - 1 - j, j)
    rows = dy + torch.arange(h, device=dev).view(1, h, 1)
    index = (rows * width + dx + j).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def random_flip(x: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror left-right a random half of the batch."""
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, gr, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * gr + 0.114 * b


def color_jitter(x: Tensor, g: torch.Generator, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0) -> Tensor:
    """Per-sample brightness, contrast, saturation and hue on [0, 1] images (torchvision's definitions;
    hue as a rotation about the grey axis, in turns)."""
    n, dev = x.shape[0], x.device
    if brightness > 0:
        x = x * _uniform(n, max(0.0, 1 - brightness), 1 + brightness, g, dev).view(n, 1, 1, 1)
    if contrast > 0:
        factor = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, g, dev).view(n, 1, 1, 1)
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor + mean
    if saturation > 0 and x.shape[1] == 3:
        factor = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, g, dev).view(n, 1, 1, 1)
        gray = _gray(x)
        x = (x - gray) * factor + gray
    if hue > 0 and x.shape[1] == 3:
        theta = _uniform(n, -hue, hue, g, dev) * 2 * math.pi
        cos, sin = torch.cos(theta), torch.sin(theta)
        k = 1 / 3
        s3 = math.sqrt(k)
        # Rodrigues rotation about the (1,1,1)/sqrt(3) axis, one 3x3 matrix per sample.
        rot = torch.empty(n, 3, 3, device=dev)
        a = cos + (1 - cos) * k
        b = (1 - cos) * k - s3 * sin
        c = (1 - cos) * k + s3 * sin
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 0, 2] = a, b, c
        rot[:, 1, 0], rot[:, 1, 1], rot[:, 1, 2] = c, a, b
        rot[:, 2, 0], rot[:, 2, 1], rot[:, 2, 2] = b, c, a
        x = torch.bmm(rot, x.flatten(2)).view_as(x)
    return x.clamp(0, 1)


def pca_lighting(x: Tensor, g: torch.Generator, std: float, eigval: Tensor, eigvec: Tensor) -> Tensor:
    """AlexNet's lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std), one alpha per sample."""
    n, c = x.shape[:2]
    alpha = torch.randn(n, c, generator=g, device=x.device) * std
    shift = (alpha * eigval.sqrt()) @ eigvec.T  # n, c  (eigval of the covariance: sqrt gives a std)
    return x + shift.view(n, c, 1, 1)


def resized_crop(x: Tensor, frac_w: Tensor, frac_h: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """Crop the box (centre cx, cy in [-1, 1]; sides as fractions of the image) of every sample and
    resize it back to the full size, bilinearly: one affine grid for the batch."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = frac_w
    theta[:, 1, 1] = frac_h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop(x: Tensor, g: torch.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> Tensor:
    """Inception's crop: a box of random area fraction and aspect ratio, resized to the image size."""
    n, dev = x.shape[0], x.device
    area = _uniform(n, scale[0], scale[1], g, dev)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    r = torch.exp(log_r)
    fw = torch.sqrt(area * r).clamp(max=1.0)
    fh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - fw)
    cy = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - fh)
    return resized_crop(x, fw, fh, cx, cy)


def scale_jitter(x: Tensor, g: torch.Generator, smin: float, smax: float) -> Tensor:
    """VGG's scale jittering: rescale so the side is S in [smin, smax] x size, take a random size crop."""
    n, dev = x.shape[0], x.device
    s = _uniform(n, smin, smax, g, dev).clamp(min=1.0)
    f = 1.0 / s
    cx = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - f)
    cy = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - f)
    return resized_crop(x, f, f, cx, cy)


def _boxes(n: int, h: int, w: int, area: Tensor, log_ratio: Tensor, g: torch.Generator, dev) -> Tensor:
    """A mask (n, 1, h, w) of one rectangle per sample: area fraction `area`, aspect exp(log_ratio),
    at a random position inside the image."""
    r = torch.exp(log_ratio)
    bh = (torch.sqrt(area * h * w / r)).round().clamp(1, h)
    bw = (torch.sqrt(area * h * w * r)).round().clamp(1, w)
    y0 = (torch.rand(n, generator=g, device=dev) * (h - bh + 1)).floor()
    x0 = (torch.rand(n, generator=g, device=dev) * (w - bw + 1)).floor()
    return _rect_mask(y0, x0, y0 + bh, x0 + bw, h, w)


def _rect_mask(y0: Tensor, x0: Tensor, y1: Tensor, x1: Tensor, h: int, w: int) -> Tensor:
    dev = y0.device
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1)) & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
    return inside.unsqueeze(1)


def cutout(x: Tensor, g: torch.Generator, size: int) -> Tensor:
    """DeVries & Taylor: zero (the mean, after normalisation) a size x size square at a random centre,
    which may hang over the border."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=g, device=x.device)
    cx = torch.randint(0, w, (n,), generator=g, device=x.device)
    mask = _rect_mask(cy - size // 2, cx - size // 2, cy - size // 2 + size, cx - size // 2 + size, h, w)
    return x.masked_fill(mask, 0.0)


def random_erasing(x: Tensor, g: torch.Generator, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> Tensor:
    """Zhong et al.: with probability p, fill a random rectangle with N(0, 1) noise (normalised units)."""
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, scale[0], scale[1], g, dev)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    mask = _boxes(n, h, w, area, log_r, g, dev)
    mask &= (torch.rand(n, generator=g, device=dev) < p).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
    return torch.where(mask, noise, x)


def _beta(n: int, alpha: float, g: torch.Generator) -> np.ndarray:
    # torch's Beta takes no generator: draw a seed from ours and sample with numpy (n numbers per batch).
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
    return np.random.default_rng(seed).beta(alpha, alpha, size=n)


def mixup(x: Tensor, targets: Tensor, g: torch.Generator, alpha: float) -> tuple[Tensor, Tensor]:
    """Zhang et al.: blend each sample with a random partner, lam ~ Beta(alpha, alpha) per sample."""
    n = x.shape[0]
    lam = torch.as_tensor(_beta(n, alpha, g), dtype=x.dtype, device=x.device)
    perm = torch.randperm(n, generator=g, device=x.device)
    lam_x = lam.view(n, 1, 1, 1)
    x = x * lam_x + x[perm] * (1 - lam_x)
    targets = targets * lam[:, None] + targets[perm] * (1 - lam[:, None])
    return x, targets


def cutmix(x: Tensor, targets: Tensor, g: torch.Generator, alpha: float) -> tuple[Tensor, Tensor]:
    """Yun et al.: paste a random box of a partner; the targets mix by the pasted area."""
    n, _, h, w = x.shape
    dev = x.device
    lam = torch.as_tensor(_beta(n, alpha, g), dtype=x.dtype, device=dev)
    perm = torch.randperm(n, generator=g, device=dev)
    cut = torch.sqrt(1 - lam)
    bh, bw = (cut * h).floor(), (cut * w).floor()
    cy = torch.randint(0, h, (n,), generator=g, device=dev)
    cx = torch.randint(0, w, (n,), generator=g, device=dev)
    y0, y1 = (cy - bh // 2).clamp(0, h), (cy + bh // 2).clamp(0, h)
    x0, x1 = (cx - bw // 2).clamp(0, w), (cx + bw // 2).clamp(0, w)
    mask = _rect_mask(y0, x0, y1, x1, h, w)
    x = torch.where(mask, x[perm], x)
    kept = 1 - ((y1 - y0) * (x1 - x0)).to(x.dtype) / (h * w)
    targets = targets * kept[:, None] + targets[perm] * (1 - kept[:, None])
    return x, targets


# --------------------------------------------------------------------------- the augmenter


class BatchAugmenter:
    """The policy as one callable: uint8 NCHW batch + labels + generator -> normalised float NCHW + targets.

    Targets are the int64 labels, or float (N, num_classes) soft targets when mixup/cutmix is on.
    Everything runs on the batch's device; `generator` must live there too."""

    def __init__(self, policy: AugmentParams, stats: Stats, num_classes: int, device: torch.device | str = "cpu"):
        self.p = policy
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.mean = torch.tensor(stats.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(stats.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = self.inv_std / 255.0  # uint8 -> normalised: x * scale + bias
        self.bias = -self.mean * self.inv_std
        channels = len(stats.mean)
        if stats.eigval and len(stats.eigval) == channels:
            self.eigval = torch.tensor(stats.eigval, dtype=torch.float32, device=self.device)
            self.eigvec = torch.tensor(stats.eigvec, dtype=torch.float32, device=self.device)
        else:
            self.eigval = torch.tensor(stats.std, device=self.device) ** 2
            self.eigvec = torch.eye(channels, device=self.device)
        self._policy = _policy_transform(policy)

    @property
    def mixes(self) -> bool:
        return self.p.mixup_alpha > 0 or self.p.cutmix_alpha > 0

    def __call__(self, images: Tensor, labels: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        p = self.p
        x = images
        if self._policy is not None:
            x = self._apply_policy(x, g)
        resample = p.random_resized_crop is not None or p.scale_jitter is not None
        if resample:  # interpolation needs floats; otherwise crop and flip move uint8 bytes, 4x fewer
            x = x.float() * (1 / 255.0)
            if p.random_resized_crop is not None:
                x = random_resized_crop(x, g, p.random_resized_crop, p.rrc_ratio)
            if p.scale_jitter is not None:
                x = scale_jitter(x, g, *p.scale_jitter)
        if p.crop_padding > 0 or p.hflip:
            x = random_crop_flip(x, p.crop_padding, g, p.padding_mode, p.hflip)
        if p.brightness or p.contrast or p.saturation or p.hue or p.pca_lighting > 0:
            if not resample:
                x = x.float() * (1 / 255.0)
                resample = True
            if p.brightness or p.contrast or p.saturation or p.hue:
                x = color_jitter(x, g, p.brightness, p.contrast, p.saturation, p.hue)
            if p.pca_lighting > 0:
                x = pca_lighting(x, g, p.pca_lighting, self.eigval, self.eigvec)
        if resample:  # already in [0, 1]
            x = (x - self.mean) * self.inv_std
        else:  # uint8 -> normalised float in one multiply-add
            x = torch.addcmul(self.bias, x.float(), self.scale)
        if p.cutout > 0:
            x = cutout(x, g, p.cutout)
        if p.random_erasing > 0:
            x = random_erasing(x, g, p.random_erasing, p.erasing_scale, p.erasing_ratio)
        targets = labels
        if self.mixes:
            targets = F.one_hot(labels, self.num_classes).to(x.dtype)
            if torch.rand((), generator=g, device=g.device).item() < p.mix_prob:
                use_cutmix = p.cutmix_alpha > 0 and (
                    p.mixup_alpha <= 0 or torch.rand((), generator=g, device=g.device).item() < 0.5
                )
                if use_cutmix:
                    x, targets = cutmix(x, targets, g, p.cutmix_alpha)
                else:
                    x, targets = mixup(x, targets, g, p.mixup_alpha)
        return x, targets

    def _apply_policy(self, images: Tensor, g: torch.Generator) -> Tensor:
        # torchvision's policies draw from the global RNG: seed it from our generator, and leave it as
        # it was. Per sample, on purpose: each image gets its own ops (the documented exception).
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self._policy(img) for img in images])


def _policy_transform(p: AugmentParams):
    from torchvision.transforms import v2

    if p.policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(p.autoaugment_policy))
    if p.policy == "randaugment":
        return v2.RandAugment(num_ops=p.randaugment_ops, magnitude=p.randaugment_magnitude)
    if p.policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    return None


# --------------------------------------------------------------------------- the stage


def preview_grid(images: Tensor, columns: int = 8) -> np.ndarray:
    """Float NCHW images in [0, 1] -> one uint8 HWC grid with a 2-pixel border."""
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    pad = 2
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), np.float32)
    imgs = images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = imgs[i]
    return (grid * 255).round().astype(np.uint8)


def augment(params: Params, layout: Layout) -> dict:
    """The stage: policy.json, stats.json and preview.png under data/augment/."""
    from PIL import Image

    data = load_prepared(layout.prepared)
    images, labels = data.split("train")
    stats = compute_stats(images)
    num_classes = data.num_classes
    out = layout.augment
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "policy.json", params.augment.model_dump(mode="json"))
    write_json(out / "stats.json", stats.to_json())

    g = torch.Generator().manual_seed(params.seed)
    k = min(params.augment.preview_images, len(images))
    idx = torch.randperm(len(images), generator=g)[:k].sort().values.numpy()
    batch = to_nchw(np.asarray(images[idx]))
    augmenter = BatchAugmenter(params.augment, stats, num_classes)
    x, _ = augmenter(batch, torch.as_tensor(np.asarray(labels[idx]), dtype=torch.int64), g)
    x = x / augmenter.inv_std + augmenter.mean  # back to [0, 1] for viewing
    grid = preview_grid(x, columns=int(math.ceil(math.sqrt(k))))
    scale = max(1, 256 // max(grid.shape[:2]))
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(out / "preview.png") as tmp:
        img.save(tmp, format="PNG")
    return {
        "policy": str(out / "policy.json"),
        "stats": str(out / "stats.json"),
        "preview": str(out / "preview.png"),
        "mean": list(stats.mean),
        "std": list(stats.std),
        "train_images": int(len(images)),
    }
