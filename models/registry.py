"""The zoo's registry: every architecture registers its builder by name, with its metadata as data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from torch import nn

from models.classifier import Classifier, FittedClassifier  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    year: int
    paper: str
    scale: Literal["small", "imagenet", "any"]  # the input size the variant was designed for
    builder: Callable[..., nn.Module]
    trained_by: Literal["sgd", "fit"] = "sgd"  # "fit": closed-form / memorising (kNN, Bayes)
    in_channels: int = 3  # the paper's input channels (1: LeNet-5's greyscale digits)


_REGISTRY: dict[str, ModelInfo] = {}


def register(
    family: str,
    year: int,
    paper: str,
    scale: Literal["small", "imagenet", "any"] = "any",
    name: str | None = None,
    trained_by: Literal["sgd", "fit"] = "sgd",
    in_channels: int = 3,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: `@register("ResNet", 2015, "He et al., Deep Residual Learning")` over a builder."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"architecture {key!r} registered twice")
        _REGISTRY[key] = ModelInfo(key, family, year, paper, scale, builder, trained_by, in_channels)
        return builder

    return wrap


@contextmanager
def temporary_registrations() -> Iterator[None]:
    """Whatever is registered inside the block is unregistered when it ends (test-only models):

        with temporary_registrations():
            register("Test", 2024, "a test", name="test_tiny")(TinyCNN)
            ...
    """
    before = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


def available() -> dict[str, ModelInfo]:
    return dict(_REGISTRY)


def build(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    """Build architecture `name` for `num_classes` classes on `in_channels` x `image_size`² inputs."""
    try:
        info = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; allowed: {', '.join(sorted(_REGISTRY))}") from None
    return info.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
