"""The zoo's registry: every architecture registers its builder by name, with its metadata as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    year: int
    paper: str
    scale: Literal["small", "imagenet", "any"]  # the input size the variant was designed for
    builder: Callable[..., nn.Module]
    trained_by: Literal["sgd", "fit"] = "sgd"  # "fit": closed-form / memorising (kNN, Bayes)


_REGISTRY: dict[str, ModelInfo] = {}


def register(
    family: str,
    year: int,
    paper: str,
    scale: Literal["small", "imagenet", "any"] = "any",
    name: str | None = None,
    trained_by: Literal["sgd", "fit"] = "sgd",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: `@register("ResNet", 2015, "He et al., Deep Residual Learning")` over a builder."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"architecture {key!r} registered twice")
        _REGISTRY[key] = ModelInfo(key, family, year, paper, scale, builder, trained_by)
        return builder

    return wrap


def available() -> dict[str, ModelInfo]:
    return dict(_REGISTRY)


def build(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    """Build architecture `name` for `num_classes` classes on `in_channels` x `image_size`² inputs."""
    try:
        info = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; allowed: {', '.join(sorted(_REGISTRY))}") from None
    return info.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)


class FittedClassifier(nn.Module):
    """A classifier trained by fitting, not by SGD (kNN, Gaussian naive Bayes).

    The trainer calls `fit(x, y)` once with the whole normalised training split (float NCHW, int64
    labels); `forward(x)` then returns scores of shape (N, num_classes) usable as logits.
    """

    def fit(self, x: Tensor, y: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # What was fitted (the memorised training set, the class statistics) is held in buffers whose
        # shapes are only known after fit(): take the saved shapes so a fresh model loads a fitted one.
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
