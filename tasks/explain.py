"""Look inside one trained model: what it learned, where it looks, what it gets wrong.

On a fixed, class-balanced draw of `explain.split` images (`explain.seed`), writes `outputs/explain/<arch>/`:

    filters.png          the first layer's weights as images: conv filters (ViT: the patch embedding),
                         or a linear layer's per-class templates and an MLP's hidden units
    feature_maps.png     the most active channels at the end of each stage, for two images
    gradcam.png          Grad-CAM (Selvaraju et al. 2017) of the predicted class, at the last feature map
                         with at least `explain.gradcam_min_size` pixels a side
    attention.png        attention rollout (Abnar & Zuidema 2020): what ViT's class token reads; for
                         CoAtNet, which positions of its finest attention stage feed the rest
    occlusion.png        occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): how much the true class's
                         probability drops when a square of the mean colour covers each place
    receptive_field.png  the effective receptive field (Luo et al. 2016) of the last feature map: the
                         input-gradient of its centre unit, averaged over the drawn images
    mistakes.png         the most confident mistakes per true class; mistakes.json lists every mistake
                         of the split and the most confused class pairs
    maps/*.npy           the arrays behind the pictures
    explain.json         what was made, what does not apply to this model and why, the images drawn

Captum does the attribution (LayerGradCam, Occlusion). What it lacks is written here, small: the
rollout, the receptive field, the filter and feature-map grids, the gallery. Nothing here changes a
model: it is read from model.pt, used in eval mode and never written back.
"""

from __future__ import annotations

import contextlib
import re
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.classifier import FittedClassifier
from models.coatnet import RelativeAttention
from models.vit import ViT
from tasks.engine import pick_device
from tasks.errors import UserError
from tasks.evaluate import _pyplot, confusion, predict_logits, softmax
from tasks.files import atomic_dir, save_npy, write_json
from tasks.layout import Layout
from tasks.params import ExplainParams, Params
from tasks.readers import PreparedData, load_prepared, load_trained, preprocessing
from tasks.serving import preprocess

# --------------------------------------------------------------------------- which images


def draw_images(labels: np.ndarray, per_class: int, max_classes: int, seed: int) -> np.ndarray:
    """Indices of `per_class` images of each class (at most `max_classes` classes, evenly spaced over
    those present), in class order: the same draw for the same labels and seed."""
    classes = np.unique(labels)
    if len(classes) > max_classes:
        classes = classes[np.linspace(0, len(classes) - 1, max_classes).round().astype(int)]
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        picks += sorted(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    return np.asarray(picks, dtype=np.int64)


# --------------------------------------------------------------------------- what the network computes


@contextlib.contextmanager
def hooked(handles: list) -> Iterator[None]:
    """Hooks that are removed however the block ends: the model leaves as it came."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace(model: nn.Module, x: Tensor) -> list[tuple[str, Tensor]]:
    """Every submodule's output during `forward_features(x)`, in the order they finish; modules that run
    more than once (a shared ReLU) are left out, since no single output is theirs."""
    records: list[tuple[str, Tensor]] = []
    calls: Counter[str] = Counter()

    def recorder(name: str):
        def record(module: nn.Module, args: Any, out: Any) -> None:
            calls[name] += 1
            if isinstance(out, Tensor):
                records.append((name, out.detach()))
        return record

    with hooked([m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if n]), torch.no_grad():
        model.forward_features(x)
    return [(n, out) for n, out in records if calls[n] == 1]


def tokens_to_grid(tokens: Tensor) -> Tensor:
    """ViT tokens (N, 1 + g*g, D) -> the patch tokens as a map (N, D, g, g)."""
    patches = tokens[:, 1:]
    g = int(round(patches.shape[1] ** 0.5))
    return patches.transpose(1, 2).reshape(len(tokens), -1, g, g)


def stage_ends(model: nn.Module, traced: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """The maps where each stage ends: at each resolution, the last output of the outermost modules that
    work at it (ResNet's `layer2`, CoAtNet's `s1`, VGG's last ReLU before a pooling); 1x1 maps show nothing
    and are left out. For ViT, every encoder block's patch tokens."""
    if isinstance(model, ViT):
        return [(n, tokens_to_grid(t)) for n, t in traced if re.fullmatch(r"encoder\.layers\.[^.]+", n)]
    by_size: dict[tuple[int, int], list[tuple[str, Tensor]]] = {}
    for name, t in traced:
        if t.ndim == 4 and min(t.shape[-2:]) > 1:
            by_size.setdefault(tuple(t.shape[-2:]), []).append((name, t))
    ends = []
    for outputs in by_size.values():
        outermost = min(name.count(".") for name, _ in outputs)
        ends.append([(n, t) for n, t in outputs if n.count(".") == outermost][-1])
    return ends


def gradcam_layer(model: nn.Module, traced: list[tuple[str, Tensor]], min_size: int) -> str | None:
    """The last stage end whose map has at least `min_size` pixels a side: Grad-CAM's layer."""
    maps = [n for n, t in stage_ends(model, traced) if min(t.shape[-2:]) >= min_size]
    return maps[-1] if maps else None


def first_layer(model: nn.Module, x: Tensor) -> tuple[str, Tensor] | None:
    """The first convolution or linear layer a forward pass runs, with its weights as images
    (out, C, k, k); a linear layer only when it reads the whole image (its rows are images)."""
    order: list[tuple[str, nn.Module]] = []
    with hooked([m.register_forward_hook(lambda m, a, o, n=n: order.append((n, m)))
                 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]), torch.no_grad():
        model(x[:1])
    if not order:
        return None
    name, layer = order[0]
    weight = layer.weight.detach().float().cpu()
    c, h, w = x.shape[1:]
    if isinstance(layer, nn.Conv2d):
        return name, weight if weight.shape[1] == c else weight.mean(1, keepdim=True)
    return (name, weight.view(-1, c, h, w)) if weight.shape[1] == c * h * w else None


# --------------------------------------------------------------------------- where it looks


def _unit_max(maps: Tensor) -> Tensor:
    """Each map scaled so its largest value is 1."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)
    return maps / peak.view(-1, *[1] * (maps.ndim - 1))


def gradcam(model: nn.Module, layer: str, x: Tensor, targets: Tensor) -> np.ndarray:
    """Grad-CAM of class `targets` at `layer`, upsampled to the image, each map scaled to [0, 1]."""
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return _unit_max(cam[:, 0].clamp_min(0)).cpu().numpy()


def occlusion(model: nn.Module, x: Tensor, targets: Tensor, window: int, stride: int, batch: int) -> np.ndarray:
    """Drop of the probability of class `targets` when a window x window square of the mean colour
    (0 after normalisation) covers each place, averaged over the windows that cover a pixel."""
    from captum.attr import Occlusion

    def probabilities(inputs: Tensor) -> Tensor:
        return torch.softmax(model(inputs).float(), dim=1)

    c = x.shape[1]
    with torch.no_grad():
        drop = Occlusion(probabilities).attribute(
            x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride), baselines=0.0,
            target=targets, perturbations_per_eval=max(1, batch // len(x)))
    return drop[:, 0].cpu().numpy()


def attention_matrices(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The head-averaged attention (N, T, T) of every attention layer, in order: ViT's multi-head
    attention and CoAtNet's relative attention (its softmax(q.k / sqrt(d) + w_{i-j}), Eq. 3)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.MultiheadAttention, RelativeAttention))]
    if not layers:  # a CNN: no forward pass to make
        return []
    seen: list[tuple[nn.Module, Tensor]] = []
    with hooked([m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0]))) for m in layers]), \
            torch.no_grad():
        model.forward_features(x)
    out = []
    with torch.no_grad():
        for layer, tokens in seen:
            if isinstance(layer, nn.MultiheadAttention):
                out.append(layer(tokens, tokens, tokens, need_weights=True, average_attn_weights=True)[1])
                continue
            b, n, _ = tokens.shape
            q, k, _ = layer.qkv(tokens).view(b, n, 3, layer.heads, -1).permute(2, 0, 3, 1, 4)
            bias = layer.bias_table[layer.bias_index].permute(2, 0, 1)
            out.append((q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias).softmax(-1).mean(1))
    return out


def rollout(matrices: list[Tensor], class_token: bool) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): the residual path as 0.5 I + 0.5 A, rows renormalised,
    multiplied through the layers. With a class token its row over the patches; without one (CoAtNet,
    whose head averages all positions) the mean row. Returns (N, g, g)."""
    joint = None
    for a in matrices:
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    relevance = joint[:, 0, 1:] if class_token else joint.mean(1)
    g = int(round(relevance.shape[-1] ** 0.5))
    return relevance.reshape(-1, g, g)


def attention_rollout(model: nn.Module, x: Tensor) -> tuple[np.ndarray, str] | None:
    """The rollout upsampled to the image, each map scaled to [0, 1], and what it covers; None without attention."""
    matrices = attention_matrices(model, x)
    if not matrices:
        return None
    if isinstance(model, ViT):
        rolled, what = rollout(matrices, class_token=True), f"class token over {len(matrices)} layers"
    else:  # CoAtNet: the stage with the finest grid (its blocks share it; the next stage pools)
        finest = max(m.shape[-1] for m in matrices)
        stage = [m for m in matrices if m.shape[-1] == finest]
        rolled = rollout(stage, class_token=False)
        side = rolled.shape[-1]
        what = f"mean over positions, {len(stage)} blocks of the {side}x{side} attention stage"
    up = F.interpolate(rolled[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return _unit_max(up).cpu().numpy(), what


def effective_receptive_field(model: nn.Module, x: Tensor) -> np.ndarray | None:
    """|d (centre unit of the last feature map, summed over channels) / d input|, summed over the input
    channels and averaged over the images (Luo et al. 2016), scaled to [0, 1]. None when the features
    are not a map (the baselines read flat pixels)."""
    x = x.clone().requires_grad_(True)
    features = model.forward_features(x)
    if isinstance(model, ViT):
        features = tokens_to_grid(features)
    if features.ndim != 4:
        return None
    h, w = features.shape[-2:]
    (grad,) = torch.autograd.grad(features[:, :, h // 2, w // 2].sum(), x)
    erf = grad.abs().sum(1).mean(0)
    return (erf / erf.max().clamp_min(1e-12)).cpu().numpy()


def centred_side(erf: np.ndarray, mass: float = 0.9) -> int:
    """Side of the smallest centred square that holds `mass` of the map's total."""
    size = erf.shape[0]
    total = float(erf.sum()) or 1.0
    for side in range(1, size + 1):
        lo = (size - side) // 2
        if erf[lo : lo + side, lo : lo + side].sum() >= mass * total:
            return side
    return size


# --------------------------------------------------------------------------- what it gets wrong


def mistakes(probs: np.ndarray, labels: np.ndarray, classes: list[str], pairs: int) -> dict:
    """Every misclassified image, most confident first, and the most confused (true, predicted) pairs."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    rows = [{"index": int(i), "true": classes[labels[i]], "predicted": classes[predicted[i]],
             "confidence": float(probs[i, predicted[i]]), "true_probability": float(probs[i, labels[i]])}
            for i in wrong]
    counts = confusion(labels, predicted, len(classes))
    np.fill_diagonal(counts, 0)
    ranked = sorted(zip(*np.nonzero(counts)), key=lambda tp: (-counts[tp], tp))[:pairs]
    return {"n": int(len(labels)), "errors": len(rows), "mistakes": rows,
            "confused_pairs": [{"true": classes[t], "predicted": classes[p], "count": int(counts[t, p])}
                               for t, p in ranked]}


# --------------------------------------------------------------------------- pictures
# Each picture is one mosaic drawn as one image, with the cells' titles as text: matplotlib lays out a
# single axes in a fraction of the time a grid of subplots takes.


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HWC, grey or RGB -> float RGB in [0, 1]."""
    x = image.astype(np.float32) / 255
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def _colour(values: np.ndarray, cmap: str, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Values mapped through a matplotlib colormap to float RGB."""
    import matplotlib

    return matplotlib.colormaps[cmap](np.clip((values - lo) / ((hi - lo) or 1.0), 0, 1))[..., :3].astype(np.float32)


def _scaled(values: np.ndarray) -> np.ndarray:
    """Values stretched to [0, 1] (a constant map is 0)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / ((hi - lo) or 1.0)


def _enlarge(cell: np.ndarray, size: int) -> np.ndarray:
    """A cell resized to size x size by repeating pixels (nearest neighbour)."""
    rows = np.arange(size) * cell.shape[0] // size
    cols = np.arange(size) * cell.shape[1] // size
    return cell[rows][:, cols]


def overlay(image: np.ndarray, heat: np.ndarray, signed: bool = False) -> np.ndarray:
    """A map laid over its image: jet over [0, 1]; a signed map red where it is positive, blue where negative."""
    if signed:
        limit = float(np.abs(heat).max()) or 1.0
        return 0.4 * _rgb(image) + 0.6 * _colour(heat, "RdBu_r", -limit, limit)
    return 0.5 * _rgb(image) + 0.5 * _colour(heat, "jet")


def save_grid(cells: list[np.ndarray | None], titles: list[str], cols: int, path: Path, title: str,
              cell_inches: float = 0.85) -> Path:
    """RGB cells (float, [0, 1]) in rows of `cols`, each enlarged to the largest one's size, under its title."""
    plt = _pyplot()
    size = max(c.shape[0] for c in cells if c is not None)
    lines = max((t.count("\n") + 1 for t in titles if t), default=0)  # a cell's title: one or two lines
    head, pad = max(6, size * lines // 5) if lines else 0, max(1, size // 16)
    rows = -(-len(cells) // cols)
    step_y, step_x = size + head + pad, size + pad
    canvas = np.ones((rows * step_y + pad, cols * step_x + pad, 3), np.float32)
    for i, cell in enumerate(cells):
        if cell is not None:
            y, x = (i // cols) * step_y + head + pad, (i % cols) * step_x + pad
            canvas[y : y + size, x : x + size] = _enlarge(cell, size)
    inch = cell_inches / size
    width, height = max(canvas.shape[1] * inch, 4.5), canvas.shape[0] * inch
    title = "\n".join(textwrap.fill(line, int(width * 16)) for line in title.split("\n"))  # 8 pt fits ~16 a inch
    top = 0.25 + 0.15 * title.count("\n")
    fig = plt.figure(figsize=(width, height + top))
    ax = fig.add_axes((0, 0, 1, height / (height + top)))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, text in enumerate(titles):
        if text:
            ax.text((i % cols) * step_x + pad + size / 2, (i // cols) * step_y + head + pad - 1, text,
                    ha="center", va="bottom", fontsize=6)
    fig.suptitle(title, fontsize=8, y=1 - 0.05 / (height + top))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_overlays(images: np.ndarray, maps: np.ndarray, titles: list[str], per_row: int, path: Path, title: str,
                  signed: bool = False) -> Path:
    """Each image beside its map laid over it, `per_row` pairs a row, in draw order."""
    cells, names = [], []
    for image, heat, text in zip(images, maps, titles):
        cells += [_rgb(image), overlay(image, heat, signed)]
        names += [text, ""]
    return save_grid(cells, names, 2 * per_row, path, title)


def plot_filters(weights: Tensor, path: Path, title: str, names: list[str] | None = None) -> Path:
    """Filters (out, C, k, k) as a grid, each stretched to its own range: RGB for three channels, else grey."""
    cells = []
    for w in weights.numpy():
        w = _scaled(w)
        cells.append(np.moveaxis(w, 0, -1) if w.shape[0] == 3 else np.repeat(w[0][..., None], 3, axis=-1))
    size = max(24, weights.shape[-1])
    cells = [_enlarge(c, size) for c in cells]
    return save_grid(cells, names or [""] * len(cells), min(len(cells), 8 if names else 16), path, title)


def plot_feature_maps(images: np.ndarray, stages: list[tuple[str, Tensor]], channels: int, path: Path,
                      title: str) -> Path:
    """For each image a row per stage: the image, then its `channels` most active channels there."""
    cells, names = [], []
    for i, image in enumerate(images):
        for name, maps in stages:
            activity = maps[i].flatten(1).mean(1)
            top = activity.argsort(descending=True, stable=True)[:channels].tolist()
            cells.append(_rgb(image))
            names.append(f"{name} {'x'.join(map(str, maps.shape[1:]))}")
            for c in top:
                cells.append(_colour(_scaled(maps[i, c].numpy()), "viridis"))
                names.append(f"ch {c}")
            cells += [None] * (channels - len(top))
            names += [""] * (channels - len(top))
    return save_grid(cells, names, channels + 1, path, title)


def plot_receptive_field(erf: np.ndarray, half: int, most: int, path: Path, title: str) -> Path:
    """The gradient map, with the centred squares that hold 50 % (white) and 90 % (cyan) of it."""
    cell = _colour(erf, "magma")
    for side, colour in ((most, (0.0, 1.0, 1.0)), (half, (1.0, 1.0, 1.0))):
        lo, hi = (erf.shape[0] - side) // 2, (erf.shape[0] - side) // 2 + side - 1
        edge = np.zeros(erf.shape, bool)
        edge[lo : hi + 1, [lo, hi]] = edge[[lo, hi], lo : hi + 1] = True
        cell[edge] = colour
    return save_grid([_enlarge(cell, max(96, erf.shape[0]))], [""], 1, path,
                     f"{title}\n50% of the gradient within the centred {half}x{half} (white), 90% within "
                     f"{most}x{most} (cyan)", cell_inches=3.2)


def plot_mistakes(images: np.ndarray, found: dict, classes: list[str], per_class: int, max_classes: int,
                  path: Path, title: str) -> Path:
    """A row per true class (those with the most mistakes first), its most confident mistakes in it."""
    by_class: dict[str, list[dict]] = {}
    for m in found["mistakes"]:
        by_class.setdefault(m["true"], []).append(m)
    shown = sorted(by_class, key=lambda c: (-len(by_class[c]), classes.index(c)))[:max_classes]
    cells: list[np.ndarray | None] = []
    names: list[str] = []
    for name in shown:
        row = by_class[name][:per_class]
        cells += [_rgb(images[m["index"]]) for m in row] + [None] * (per_class - len(row))
        names += [f"{name}\nas {m['predicted']} ({m['confidence']:.2f})" for m in row] + [""] * (per_class - len(row))
    pairs = ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in found["confused_pairs"][:5])
    heading = f"{title}: {found['errors']} of {found['n']} wrong" + (f"\nmost confused: {pairs}" if pairs else "")
    if not cells:
        cells, names = [np.ones((*images.shape[1:3], 3), np.float32)], ["no mistakes"]
    return save_grid(cells, names, per_class if shown else 1, path, heading, cell_inches=1.0)


# --------------------------------------------------------------------------- the stage


@dataclass
class Drawn:
    """The images being explained, as every picture needs them."""

    images: np.ndarray  # uint8 NHWC, for display
    x: Tensor  # normalised, on the model's device
    predicted: Tensor
    target: Tensor  # occlusion's class: the true one when known, else the predicted one
    titles: list[str]
    per_row: int  # images a row: one class a row when the classes are known

    traced: list[tuple[str, Tensor]] | None = None  # every module's output for `two`, made once (`traced_two`)

    @property
    def two(self) -> list[int]:
        """Two images of two classes, for the feature maps."""
        return [0, self.per_row] if len(self.images) > self.per_row else [0]

    def traced_two(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        """`trace` of the two images, shared by the feature maps and Grad-CAM's choice of layer."""
        if self.traced is None:
            self.traced = trace(model, self.x[self.two])
        return self.traced


# Each picture: made (a dict saying what it shows) or not (a str saying why not).


def filters_picture(model: nn.Module, d: Drawn, ep: ExplainParams, out: Path, name: str, classes: list[str]):
    first = first_layer(model, d.x)
    if first is None:
        return "its first layer reads no image (neither a convolution nor a linear layer over the pixels)"
    layer, weights = first
    templates = weights.shape[0] == len(classes) and weights.shape[-1] == d.x.shape[-1]  # a linear classifier
    shown = weights[: ep.filters]
    plot_filters(shown, out / "filters.png", f"{name}: {layer}, {len(shown)} of {len(weights)} filters "
                 f"{'x'.join(map(str, weights.shape[1:]))}", names=classes if templates else None)
    return {"file": "filters.png", "layer": layer, "shape": list(weights.shape)}


def feature_maps_picture(model: nn.Module, d: Drawn, ep: ExplainParams, out: Path, name: str, classes: list[str]):
    stages = stage_ends(model, d.traced_two(model))
    if not stages:
        return f"{name} has no feature maps (it reads the flat pixels)"
    picks = np.unique(np.linspace(0, len(stages) - 1, min(ep.feature_layers, len(stages))).round().astype(int))
    chosen = [(stages[i][0], stages[i][1].float().cpu()) for i in picks]
    plot_feature_maps(d.images[d.two], chosen, ep.feature_channels, out / "feature_maps.png",
                      f"{name}: the most active channels at each stage's end")
    return {"file": "feature_maps.png", "layers": [n for n, _ in chosen]}


def gradcam_picture(model: nn.Module, d: Drawn, ep: ExplainParams, out: Path, name: str, classes: list[str]):
    if isinstance(model, ViT):
        return "a transformer: its class token's attention is shown instead (attention.png)"
    layer = gradcam_layer(model, d.traced_two(model), ep.gradcam_min_size)
    if layer is None:
        return f"no feature map of {ep.gradcam_min_size} pixels a side or more (explain.gradcam_min_size)"
    cam = gradcam(model, layer, d.x, d.predicted)
    save_npy(out / "maps" / "gradcam.npy", cam.astype(np.float32))
    plot_overlays(d.images, cam, d.titles, d.per_row, out / "gradcam.png",
                  f"{name}: Grad-CAM of the predicted class at {layer}")
    return {"file": "gradcam.png", "layer": layer, "target": "predicted class"}


def attention_picture(model: nn.Module, d: Drawn, ep: ExplainParams, out: Path, name: str, classes: list[str]):
    rolled = attention_rollout(model, d.x)
    if rolled is None:
        return f"{name} has no attention layers"
    maps, what = rolled
    save_npy(out / "maps" / "attention.npy", maps.astype(np.float32))
    plot_overlays(d.images, maps, d.titles, d.per_row, out / "attention.png", f"{name}: attention rollout ({what})")
    return {"file": "attention.png", "what": what}


def occlusion_picture(model: nn.Module, d: Drawn, ep: ExplainParams, out: Path, name: str, classes: list[str]):
    size = d.x.shape[-1]
    window = min(ep.occlusion_window or max(1, size // 4), size)
    stride = min(ep.occlusion_stride or max(1, window // 2), size)
    drop = occlusion(model, d.x, d.target, window, stride, batch=256)
    save_npy(out / "maps" / "occlusion.npy", drop.astype(np.float32))
    whose = "predicted" if d.target is d.predicted else "true"
    plot_overlays(d.images, drop, d.titles, d.per_row, out / "occlusion.png",
                  f"{name}: drop of p({whose} class) under a {window}x{window} occluder, stride {stride}", signed=True)
    return {"file": "occlusion.png", "window": window, "stride": stride, "target": f"{whose} class"}


def receptive_field_picture(model: nn.Module, d: Drawn, ep: ExplainParams, out: Path, name: str, classes: list[str]):
    erf = effective_receptive_field(model, d.x)
    if erf is None:
        return f"{name} has no feature map (it reads the flat pixels)"
    half, most = centred_side(erf, 0.5), centred_side(erf, 0.9)
    save_npy(out / "maps" / "receptive_field.npy", erf.astype(np.float32))
    plot_receptive_field(erf, half, most, out / "receptive_field.png", f"{name}: effective receptive field")
    return {"file": "receptive_field.png", "side_50": half, "side_90": most, "image_size": int(d.x.shape[-1])}


PICTURES = {"filters": filters_picture, "feature_maps": feature_maps_picture, "gradcam": gradcam_picture,
            "attention": attention_picture, "occlusion": occlusion_picture,
            "receptive_field": receptive_field_picture}
FITTED_PICTURES = ("occlusion",)  # needs only the model's outputs: applies to the fitted baselines too


def explain_images(model: nn.Module, images: np.ndarray, labels: np.ndarray | None, classes: list[str],
                   prep: dict, ep: ExplainParams, device: torch.device, out: Path, name: str) -> dict:
    """Every picture that applies to `model` for `images` (uint8 NHWC); labels None: the images' true
    class is unknown and occlusion explains the predicted one. Returns what was made and what not, and why."""
    model = model.to(device).eval()
    x = preprocess(images, **prep).to(device)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1)
    predicted = probs.argmax(1)
    known = labels is not None
    drawn = Drawn(images, x, predicted, torch.as_tensor(labels, device=device) if known else predicted,
                  [f"{classes[labels[i]]}\nas {classes[p]}" if known else f"{classes[p]} ({probs[i, p]:.2f})"
                   for i, p in enumerate(predicted.tolist())],
                  ep.images_per_class if known else min(len(images), 4))
    (out / "maps").mkdir(parents=True, exist_ok=True)
    fitted = isinstance(model, FittedClassifier)
    made: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for key, picture in PICTURES.items():
        if fitted and key not in FITTED_PICTURES:
            skipped[key] = f"{name} is fitted on flat pixels (no layers, no gradients): nothing of this kind to show"
            continue
        result = picture(model, drawn, ep, out, name, classes)
        if isinstance(result, dict):
            made[key] = result
        else:
            skipped[key] = result
    return {"made": made, "skipped": skipped, "predicted": [classes[p] for p in predicted.tolist()],
            "labels": [classes[c] for c in labels] if known else None}


def explain_model(model: nn.Module, data: PreparedData, prep: dict, params: Params, out: Path, name: str) -> dict:
    """The stage's pictures for `model` on `explain.split` of `data`, written into `out`."""
    ep = params.explain
    device = pick_device(params.device)
    images, labels = data.split(ep.split)
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    drawn = draw_images(labels, ep.images_per_class, ep.max_classes, ep.seed)
    summary = explain_images(model, images[drawn], labels[drawn], data.classes, prep, ep, device, out, name)
    model = model.to(device).eval()
    # evaluate.batch_size sets only how many images a forward pass takes, not what comes out: it is not
    # among the params this stage's cache key reads (caching.READS).
    probs = softmax(predict_logits(model, images, prep, params.evaluate.batch_size, device).astype(np.float64))
    found = mistakes(probs, labels, data.classes, ep.confused_pairs)
    write_json(out / "mistakes.json", {"split": ep.split, **found})
    plot_mistakes(images, found, data.classes, ep.mistakes_per_class, ep.max_classes, out / "mistakes.png",
                  f"{name}: the most confident mistakes on {ep.split}")
    summary["made"]["mistakes"] = {"file": "mistakes.png", "list": "mistakes.json", "errors": found["errors"],
                                   "n": found["n"]}
    return {**summary, "split": ep.split, "drawn": drawn.tolist(), "confused_pairs": found["confused_pairs"]}


def explain(params: Params, layout: Layout, arch: str) -> dict:
    """Explain the trained `arch`; write `layout.explain(arch)`; return what was made."""
    started = time.perf_counter()
    with atomic_dir(layout.explain(arch)) as out:
        if not params.explain.enabled:
            report = {"arch": arch, "enabled": False}
        else:
            data = load_prepared(layout.prepared)
            model = load_trained(layout, arch)
            report = {"arch": arch, "enabled": True,
                      **explain_model(model, data, preprocessing(layout, data), params, out, arch)}
        report["seconds"] = round(time.perf_counter() - started, 3)
        write_json(out / "explain.json", report)
    return summary_of(report)


def summary_of(report: dict) -> dict:
    """The headline of explain.json: what was made, what was skipped, the numbers worth a glance."""
    if not report.get("enabled", True):
        return {"arch": report["arch"], "skipped": "explain.enabled: false"}
    made = report["made"]
    return {"arch": report["arch"], "made": sorted(made), "skipped": sorted(report["skipped"]),
            "gradcam_layer": made.get("gradcam", {}).get("layer"),
            "receptive_field_50": made.get("receptive_field", {}).get("side_50"),
            "errors": made["mistakes"]["errors"], "n": made["mistakes"]["n"],
            "confused_pairs": report["confused_pairs"][:3], "seconds": report["seconds"]}


def explain_files(params: Params, layout: Layout, arch: str, paths: list[Path], out: Path | None = None) -> dict:
    """`zooflow explain --images`: the pictures that apply, for your own image files (their class unknown:
    occlusion explains the predicted one), into `out`, by default `outputs/explain-images/<arch>/`: beside
    the stage's own folder, whose stamp vouches for the drawn split images only."""
    from tasks.decode import BadImage, decode_one

    data = load_prepared(layout.prepared)
    decoded = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"--images {path}: no such file")
        try:
            decoded.append(decode_one(str(path), data.image_size, data.channels, params.data.max_image_pixels)[0])
        except BadImage as exc:
            raise UserError(f"--images {path}: {exc}") from None
    model = load_trained(layout, arch)
    folder = out or layout.root / "outputs" / "explain-images" / arch
    with atomic_dir(folder) as tmp:
        report = explain_images(model, np.stack(decoded), None, data.classes, preprocessing(layout, data),
                                params.explain, pick_device(params.device), tmp, arch)
        report = {"arch": arch, "images": [str(p) for p in paths], **report}
        write_json(tmp / "explain.json", report)
    return {"folder": str(folder), "made": sorted(report["made"]), "skipped": report["skipped"],
            "predicted": dict(zip(map(str, paths), report["predicted"]))}


def explain_tracked(params: Params, layout: Layout, arch: str, run_id: str | None = None) -> dict:
    """explain(), then its pictures logged to MLflow run `run_id` (by default the run its training opened)
    under `explain/`. A failure is tagged on the run (`zooflow.explain`) and raised, but leaves the run's
    status as training and evaluation left it: the model's numbers stand without pictures."""
    from tasks import tracking

    run_id = run_id or tracking.arch_run_id(layout, arch)
    if not run_id:
        return explain(params, layout, arch)
    try:
        summary = explain(params, layout, arch)
        folder = layout.explain(arch)
        for path in sorted([*folder.glob("*.png"), *folder.glob("*.json")]):
            tracking.log_artifact(params, run_id, path, "explain")
    except Exception as exc:
        try:
            tracking.client(params).set_tag(run_id, "zooflow.explain", f"failed: {str(exc).splitlines()[0][:200]}")
        except Exception:  # noqa: BLE001 - the server may be gone; the original error matters
            pass
        raise
    tracking.client(params).set_tag(run_id, "zooflow.explain", "ok")
    return summary


def logged_pictures(layout: Layout, arch: str) -> list[str]:
    """The pictures of `arch` as they are named in its MLflow run (`explain/<file>`), from explain.json."""
    from tasks.files import read_json

    path = layout.explain(arch) / "explain.json"
    if not path.exists():
        return []
    made = read_json(path).get("made", {})
    return [f"explain/{made[k]['file']}" for k in sorted(made)]
