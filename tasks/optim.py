"""Optimisers, learning-rate schedules and the model EMA, built from params.

The schedule is a pure function of the step (times a plateau multiplier), so a resumed run sets the
same learning rate as an uninterrupted one; its only state is the plateau's.
"""

from __future__ import annotations

import copy
import math
import torch
from torch import nn

from tasks.errors import UserError
from tasks.params import OptimizerParams, ScheduleParams

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool, backbone_lr_mult: float = 1.0
                 ) -> list[dict]:
    """One group, or two when normalisation weights and biases are kept out of weight decay; each split
    again into the final classifier and the rest (the backbone, whose lr is `lr_mult` x lr) when
    `backbone_lr_mult` is not 1. The classifier's groups come first: the lr a run logs is theirs."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_bias or weight_decay == 0:
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        no_decay: set[int] = set()
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if name == "bias" or isinstance(module, _NORM_TYPES) or p.ndim <= 1:
                    no_decay.add(id(p))
        decay = [p for p in params if id(p) not in no_decay]
        rest = [p for p in params if id(p) in no_decay]
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if rest:
            groups.append({"params": rest, "weight_decay": 0.0})
    if backbone_lr_mult == 1.0:
        return groups
    head = {id(p) for p in classifier(model).parameters()}
    split = [{**g, "params": [p for p in g["params"] if id(p) in head], "lr_mult": 1.0} for g in groups]
    split += [{**g, "params": [p for p in g["params"] if id(p) not in head], "lr_mult": backbone_lr_mult}
              for g in groups]
    return [g for g in split if g["params"]]


def classifier(model: nn.Module) -> nn.Module:
    """The final classifier, through the zoo's `get_classifier` face (fine-tuning needs it)."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        raise UserError(f"{type(model).__name__} has no get_classifier(): train.finetune needs the zoo's "
                        f"classifier faces (models/classifier.py)")
    return get()


class Freeze:
    """Everything but the final classifier frozen for the first `epochs` epochs: a linear probe on the
    features it starts from, then the whole network (the schedule of fine-tuning from pretrained weights).

    Frozen means no gradient (requires_grad off: backward stops at the classifier, and the optimiser skips
    what has none, weight decay included) and eval mode, as torchvision's detection references freeze
    their backbones' BatchNorm (FrozenBatchNorm2d): BatchNorm normalises with its running statistics and
    does not update them, dropout inside the frozen part is off. Whether an epoch is frozen depends on the
    epoch alone, so a resumed run freezes and thaws where an uninterrupted one does."""

    def __init__(self, model: nn.Module, epochs: int):
        head = classifier(model)
        head_name = next(name for name, m in model.named_modules() if m is head)
        inside = {id(p) for p in head.parameters()}
        self.epochs = epochs
        # What requires no gradient by design stays so: only the trainable parameters are thawed.
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in inside]
        # The frozen modules: neither the classifier, nor inside it, nor one that holds it (the model itself,
        # or the Sequential whose last layer it is: their own forward is the classifier's path).
        self.modules = [m for name, m in model.named_modules()
                        if not (name == head_name or name.startswith(f"{head_name}.")
                                or name == "" or head_name.startswith(f"{name}."))]

    def frozen(self, epoch: int) -> bool:
        return epoch < self.epochs

    def set(self, frozen: bool) -> None:
        for p in self.params:
            p.requires_grad_(not frozen)


_FUSED = {"sgd", "adam", "adamw", "adagrad"}  # torch offers fused kernels for these


def build_optimizer(model: nn.Module, p: OptimizerParams, device: torch.device, backbone_lr_mult: float = 1.0
                    ) -> torch.optim.Optimizer:
    groups = param_groups(model, p.weight_decay, p.exclude_bn_bias_decay, backbone_lr_mult)
    impl: dict = {}
    if p.implementation == "fused" or (p.implementation == "auto" and device.type == "cuda" and p.name in _FUSED):
        impl = {"fused": True}
    elif p.implementation == "foreach":
        impl = {"foreach": True}
    elif p.implementation == "for-loop":
        impl = {"foreach": False}
    kinds = {
        "sgd": lambda **kw: torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov and p.momentum > 0, **kw),
        "adagrad": lambda **kw: torch.optim.Adagrad(groups, lr=p.lr, eps=p.eps, **kw),
        "adadelta": lambda **kw: torch.optim.Adadelta(groups, lr=p.lr, rho=p.rho, eps=p.eps, **kw),
        "rmsprop": lambda **kw: torch.optim.RMSprop(groups, lr=p.lr, alpha=p.alpha, eps=p.eps, momentum=p.momentum, **kw),
        "adam": lambda **kw: torch.optim.Adam(groups, lr=p.lr, betas=p.betas, eps=p.eps, **kw),
        "adamw": lambda **kw: torch.optim.AdamW(groups, lr=p.lr, betas=p.betas, eps=p.eps, **kw),
    }
    try:
        opt = kinds[p.name](**impl)
    except (TypeError, RuntimeError, ValueError):
        if p.implementation not in ("auto",):
            raise
        opt = kinds[p.name]()  # this torch or device has no fused kernel for it
    for group in opt.param_groups:
        group["base_lr"] = p.lr * group.get("lr_mult", 1.0)
    return opt


class Schedule:
    """lr(step) = lr x warm-up x shape(step) x plateau multiplier, set on every step."""

    def __init__(self, p: ScheduleParams, epochs: int, steps_per_epoch: int):
        self.p = p
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = epochs * self.steps_per_epoch
        self.warmup = 0 if p.name == "onecycle" else int(round(p.warmup_epochs * self.steps_per_epoch))
        self.rise = max(1, int(p.onecycle_pct_start * self.total))  # one-cycle: the steps of the climb
        self.milestones = sorted(p.milestones) or [epochs // 2, (3 * epochs) // 4]
        self.plateau = {"mult": 1.0, "best": -math.inf, "bad": 0}

    def factor(self, step: int) -> float:
        p = self.p
        epoch = step // self.steps_per_epoch
        if p.name == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(1.0, max(0, step - self.warmup) / span)
            f = p.min_lr_factor + (1 - p.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        elif p.name == "step":
            f = p.step_gamma ** sum(1 for m in self.milestones if epoch >= m)
        elif p.name == "exponential":
            f = p.exp_gamma ** (epoch // p.exp_every)
        elif p.name == "onecycle":
            start, end = 1 / p.onecycle_div, 1 / (p.onecycle_div * p.onecycle_final_div)
            rising, t = self._onecycle_phase(step)
            if rising:
                f = start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t))
            else:
                f = end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
        else:  # constant, plateau
            f = 1.0
        if step < self.warmup:
            f *= p.warmup_start_factor + (1 - p.warmup_start_factor) * step / self.warmup
        return f * self.plateau["mult"]

    def momentum(self, step: int) -> float | None:
        """One-cycle's momentum (Smith 2018; torch's OneCycleLR): max -> base while lr rises, back to
        max while it falls, on the same cosine. None for the other schedules."""
        p = self.p
        if p.name != "onecycle" or p.onecycle_momentum is None:
            return None
        base, peak = p.onecycle_momentum
        rising, t = self._onecycle_phase(step)
        if rising:
            return peak + (base - peak) * 0.5 * (1 - math.cos(math.pi * t))
        return base + (peak - base) * 0.5 * (1 - math.cos(math.pi * t))

    def _onecycle_phase(self, step: int) -> tuple[bool, float]:
        """(climbing?, progress in [0, 1] through the current phase)."""
        if step < self.rise:
            return True, step / self.rise
        return False, min(1.0, (step - self.rise) / max(1, self.total - self.rise))

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        f = self.factor(step)
        m = self.momentum(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
            if m is None:
                continue
            if "betas" in group:  # Adam, AdamW: beta1 is the momentum
                group["betas"] = (m, group["betas"][1])
            elif group.get("momentum", 0) > 0:  # momentum 0 was asked for: keep it off
                group["momentum"] = m
        return optimizer.param_groups[0]["lr"]

    def observe(self, val_acc: float) -> None:
        """End of an epoch: reduce-on-plateau divides when val accuracy stops improving."""
        if self.p.name != "plateau":
            return
        s = self.plateau
        if val_acc > s["best"] + self.p.plateau_threshold:
            s["best"], s["bad"] = val_acc, 0
        else:
            s["bad"] += 1
            if s["bad"] > self.p.plateau_patience:
                s["mult"] *= self.p.plateau_factor
                s["bad"] = 0

    def state_dict(self) -> dict:
        return dict(self.plateau)

    def load_state_dict(self, state: dict) -> None:
        self.plateau = {"mult": float(state["mult"]), "best": float(state["best"]), "bad": int(state["bad"])}


class ModelEMA:
    """An exponential moving average of a model's weights (buffers copied), with the usual warm-up of
    the decay, min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the init."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        model_p = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, model_p, 1 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


