"""The faces every zoo model shows, as timm's models do, so evaluation, feature extraction and
fine-tuning are written once for the whole zoo:

- `forward_features(x)`: the feature map (N, C, H, W) or token sequence (N, T, D) before pooling;
- `forward_head(x, pre_logits=False)`: pooling, dropout and the classifier; with `pre_logits=True`
  the vector the final classifier reads, shape (N, num_features);
- `forward(x) == forward_head(forward_features(x))` (GoogLeNet adds its auxiliary logits in training);
- `num_features`, `get_classifier()` and `reset_classifier(num_classes)`, which puts a fresh final
  classifier for a new class count in place (fine-tuning from pretrained weights).

`FittedClassifier` is the same contract for the models trained by fitting (kNN, Bayes, concept
learning): their features are the flattened pixels and their head is the fitted scorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Classifier(nn.Module):
    """A network = features + head. A family says where its final classifier sits
    (`classifier_path`, a dotted submodule name) and how its head reads the features
    (`representation`: global average pooling unless the family overrides it)."""

    classifier_path = "fc"

    def forward_features(self, x: Tensor) -> Tensor:
        """Most families keep their convolutional part in `features`; the others override this."""
        return self.features(x)

    def representation(self, x: Tensor) -> Tensor:
        """What the final classifier reads: the features' global average (every net since NiN)."""
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.representation(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def num_features(self) -> int:
        classifier = self.get_classifier()
        return classifier.in_channels if isinstance(classifier, nn.Conv2d) else classifier.in_features

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_path)

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised final classifier with `num_classes` outputs, on the old one's device."""
        self.set_submodule(self.classifier_path, self.new_classifier(self.get_classifier(), num_classes))

    @staticmethod
    def new_classifier(old: nn.Module, num_classes: int) -> nn.Module:
        """The same kind of layer as `old` (a linear layer or a 1x1 conv), for `num_classes`."""
        factory = dict(device=old.weight.device, dtype=old.weight.dtype)
        if isinstance(old, nn.Conv2d):
            return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, bias=old.bias is not None, **factory)
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)


class FittedClassifier(Classifier):
    """A classifier trained by fitting, not by SGD (kNN, Gaussian naive Bayes, concept learning).

    The trainer calls `fit(x, y)` once with the whole normalised training split (float NCHW, int64
    labels); `forward(x)` then returns scores of shape (N, num_classes) usable as logits.
    Subclasses implement `fit` and `scores` (flattened inputs -> scores) and keep what they fitted
    in buffers, so `state_dict()` carries it.
    """

    def __init__(self, num_classes: int = 0, dim: int = 0) -> None:
        super().__init__()
        self.num_classes, self.dim = num_classes, dim  # dim: the flattened input's length

    def fit(self, x: Tensor, y: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def scores(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1).float()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.scores(x)

    @property
    def num_features(self) -> int:
        return self.dim

    def get_classifier(self) -> nn.Module:
        """The fitted scorer is the whole model."""
        return self

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} is fitted, not trained: build it for {num_classes} classes and call fit() again")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # What was fitted (the memorised training set, the class statistics, the hypotheses) is held
        # in buffers whose shapes are only known after fit(): take the saved shapes, so a fresh model
        # loads a fitted one with plain `load_state_dict`. This is the zoo's only data-shaped state.
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SequentialHead(Classifier):
    """torchvision's head: `avgpool`, flatten, then the `classifier` Sequential whose last layer is
    the final classifier: AlexNet's and VGG's dropout-FC-ReLU stacks (pooled to a 6x6 or 7x7 grid),
    MobileNet's and EfficientNet's dropout-linear (pooled to 1x1)."""

    @property
    def classifier_path(self) -> str:
        return f"classifier.{len(self.classifier) - 1}"

    def representation(self, x: Tensor) -> Tensor:
        return self.classifier[:-1](self.avgpool(x).flatten(1))
