"""What the lab measures on a trained model: the numbers behind the lecture notes' claims.

Plain functions on a model and the prepared splits (torch and numpy only, like the engine). The
experiment stage (tasks/experiment.py) calls them after training a run, or hands `probe(...)` to the
engine so that gradients and step sizes are measured after every epoch.

    predict               logits of a split, batched, in eval mode
    probe                 per epoch: RMS gradient at the first and last layer, the optimiser's effective step
    sharpness             the largest eigenvalue of the loss Hessian (power iteration on Hessian-vector products)
    cost                  parameters, multiply-accumulates (torch.utils.flop_counter), CPU latency per image
    receptive_field       of a chain of convolutions and pools (VGG), from the layers' kernels and strides
    block_deletion        test error with each identity-shaped block of a CIFAR ResNet (or plain net) skipped
    epochs_to             when a per-epoch curve first falls below a threshold (interpolated)
    ensemble_errors       error of k-member soft-voting ensembles, averaged over every k-subset
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks import augment as aug

# --------------------------------------------------------------------------- predictions


@torch.inference_mode()
def predict(model: nn.Module, images: np.ndarray, stats: aug.Stats, batch_size: int = 256) -> np.ndarray:
    """float32 logits (N, classes) of `model` in eval mode on uint8 NHWC `images`, normalised with `stats`."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for start in range(0, len(images), batch_size):
        x = aug.normalize(aug.to_nchw(np.asarray(images[start:start + batch_size])).to(device), stats.mean, stats.std)
        logits = model(x)
        out.append((logits[0] if isinstance(logits, (tuple, list)) else logits).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def error(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, 1) != np.asarray(labels)))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# --------------------------------------------------------------------------- per-epoch probe


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable weight matrices and kernels (ndim >= 2) in registration order: input side first."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]


def probe(batch: tuple[Tensor, Tensor], gradients: bool, effective_step: bool) -> Callable:
    """An engine probe (tasks.engine.Probe). `gradients`: the RMS gradient of the training loss (the
    auxiliary heads' included, as in training) at the first and the last weight layer, on one fixed
    normalised batch, without touching the model's state (BN running statistics are put back).
    `effective_step`: the median per-weight step size the optimiser would take now, lr / (sqrt(v) + eps)
    with v its running sum (Adagrad) or average (RMSprop, Adam: bias-corrected) of squared gradients;
    plain lr for SGD."""
    from tasks.engine import model_loss

    def measure(state) -> dict[str, float]:
        row: dict[str, float] = {}
        model = state.model
        if gradients:
            x, y = batch
            device = next(model.parameters()).device
            buffers = {k: v.clone() for k, v in model.named_buffers()}
            was_training = model.training
            model.train()
            layers = weight_layers(model)
            with torch.enable_grad():
                loss, _ = model_loss(model, model(x.to(device)), y.to(device), 0.0)
                grads = torch.autograd.grad(loss, [p for _, p in layers], allow_unused=True)
            model.load_state_dict(buffers, strict=False)
            model.train(was_training)
            rms = [float(g.norm() / math.sqrt(g.numel())) if g is not None else 0.0 for g in grads]
            row["grad_first"], row["grad_last"] = rms[0], rms[-1]
        if effective_step:
            row["effective_step"] = effective_step_size(state.optimizer)
        return row

    return measure


@torch.no_grad()
def effective_step_size(optimizer: torch.optim.Optimizer) -> float:
    """Median over every weight of the step size lr / (sqrt(v) + eps) the optimiser applies now."""
    steps = []
    for group in optimizer.param_groups:
        lr, eps = group["lr"], group.get("eps", 0.0)
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "sum" in st:  # Adagrad: every squared gradient so far, never forgotten
                v = st["sum"]
            elif "exp_avg_sq" in st:  # Adam, AdamW: bias-corrected running average
                beta2 = group["betas"][1]
                v = st["exp_avg_sq"] / (1 - beta2 ** float(st["step"]))
            elif "square_avg" in st and "acc_delta" in st:  # Adadelta: its own ratio of running averages
                steps.append(lr * ((st["acc_delta"] + eps).sqrt() / (st["square_avg"] + eps).sqrt()).flatten())
                continue
            elif "square_avg" in st:  # RMSprop
                v = st["square_avg"]
            else:  # SGD (with or without momentum): the learning rate itself
                steps.append(torch.full((1,), float(lr)))
                continue
            steps.append((lr / (v.sqrt() + eps)).flatten())
    if not steps:
        return float("nan")
    return float(torch.cat([s.float().cpu() for s in steps]).median())


# --------------------------------------------------------------------------- sharpness


def sharpness(model: nn.Module, x: Tensor, y: Tensor, iterations: int = 20, seed: int = 0) -> float:
    """The largest eigenvalue of the Hessian of the mean cross-entropy on (x, y) at the model's weights,
    by power iteration on Hessian-vector products (double backward). Eval mode: BN uses its running
    statistics, dropout is off, so the loss is a function of the weights alone. A sharp minimum has a
    large top eigenvalue (Keskar et al. 2017 measure sharpness by the loss's rise in a small box, which
    the top eigenvalue bounds for small boxes)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        out = model(x)
        loss = F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn(p.shape, generator=g).to(p.device) for p in params]
        eigenvalue = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / norm for u in v]
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            eigenvalue = float(sum((h * u).sum() for h, u in zip(hv, v)))
            v = [h.detach() for h in hv]
    return eigenvalue


# --------------------------------------------------------------------------- cost


def macs(model: nn.Module, channels: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.zeros(1, channels, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops() // 2)


def latency(model: nn.Module, channels: int, image_size: int, repeats: int = 30) -> dict[str, float]:
    """Median time of one forward pass on one image, one thread, after warm-up: CPU time of this
    thread (`latency_ms`: what the work costs, steady on a shared machine) and wall time
    (`latency_wall_ms`: what a caller waits, inflated by other load)."""
    model.eval()
    x = torch.rand(1, channels, image_size, image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu, wall = [], []
    try:
        with torch.inference_mode():
            for i in range(repeats + 3):
                c0, w0 = time.thread_time(), time.perf_counter()
                model(x)
                if i >= 3:
                    cpu.append(time.thread_time() - c0)
                    wall.append(time.perf_counter() - w0)
    finally:
        torch.set_num_threads(threads)
    return {"latency_ms": 1000 * statistics.median(cpu), "latency_wall_ms": 1000 * statistics.median(wall)}


def receptive_field(model: nn.Module) -> int:
    """The receptive field, in input pixels, of the last layer of a chain of convolutions and pools
    (VGG's `features`): rf grows by (k - 1) x jump per layer, jump by the stride."""
    rf, jump = 1, 1
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            d = getattr(m, "dilation", 1)
            d = d if isinstance(d, int) else d[0]
            rf += (k - 1) * d * jump
            jump *= s
    return rf


# --------------------------------------------------------------------------- a ResNet as an ensemble of paths


def deletable_blocks(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """(stage, index) of every block of a CIFAR ResNet or plain net (`layer1..3`) whose input and
    output have the same shape: those can be skipped, leaving the network intact (Veit et al. 2016)."""
    out = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(model, name, None)
        if not isinstance(stage, nn.Sequential):
            continue
        for i, block in enumerate(stage):
            conv1, conv2 = getattr(block, "conv1", None), getattr(block, "conv2", None)
            if conv1 is not None and conv1.stride in (1, (1, 1)) and conv1.in_channels == conv2.out_channels:
                out.append((stage, i))
    return out


def block_deletion(model: nn.Module, images: np.ndarray, labels: np.ndarray, stats: aug.Stats) -> list[float]:
    """Test error with each deletable block replaced by the identity, one at a time (the model is put
    back after each). For a residual block that removes F(x) and keeps the shortcut x; for a plain
    block it removes the layers outright, the same surgery."""
    errors = []
    for stage, i in deletable_blocks(model):
        block = stage[i]
        stage[i] = nn.Identity()
        try:
            errors.append(error(predict(model, images, stats), labels))
        finally:
            stage[i] = block
    return errors


# --------------------------------------------------------------------------- curves and ensembles


def epochs_to(curve: list[float], below: float, start: float) -> tuple[float, bool]:
    """The (fractional) epoch at which a per-epoch curve first reaches `below`, linearly interpolated
    from `start` (its value before training) through the end of each epoch. Returns (epochs, reached);
    a curve that never gets there gives (its length, False): a lower bound."""
    previous = start
    for epoch, value in enumerate(curve, start=1):
        if value <= below:
            span = previous - value
            fraction = 1.0 if span <= 0 else (previous - below) / span
            return epoch - 1 + min(max(fraction, 0.0), 1.0), True
        previous = value
    return float(len(curve)), False


def ensemble_errors(probs: list[np.ndarray], labels: np.ndarray, max_subsets: int = 64) -> list[float]:
    """Error of the soft-voting (mean probability) ensemble of k members, for k = 1 .. len(probs), each
    averaged over every k-subset of the members (at most `max_subsets` of them, in a fixed order)."""
    errors = []
    for k in range(1, len(probs) + 1):
        subsets = list(itertools.islice(itertools.combinations(range(len(probs)), k), max_subsets))
        errors.append(float(np.mean([error(np.mean([probs[i] for i in s], axis=0), labels) for s in subsets])))
    return errors
