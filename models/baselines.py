"""Baselines before convolution (seeds, lecture 1): nearest neighbours, Gaussian naive Bayes,
a linear softmax classifier and a multilayer perceptron, all on the flattened pixels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import MLP

from models.classifier import Classifier, FittedClassifier
from models.registry import register

PAPER_KNN = "Cover & Hart, Nearest neighbor pattern classification (1967)"
PAPER_BAYES = "Duda & Hart, Pattern Classification and Scene Analysis (1973)"


class KNearestNeighbors(FittedClassifier):
    """k-NN on flattened pixels with L1 or L2 distance, vectorised over batches of queries.

    Scores are log smoothed vote fractions, log((votes + a) / (k + C a)), so the argmax is the
    majority vote (ties to the lowest class, as scikit-learn) and softmax gives probabilities.
    """

    def __init__(self, num_classes: int, dim: int, k: int = 5, metric: str = "l2", chunk: int = 256,
                 smoothing: float = 0.5) -> None:
        super().__init__(num_classes, dim)
        if metric not in ("l1", "l2"):
            raise ValueError(f"knn metric must be 'l1' or 'l2', got {metric!r}")
        if k < 1:
            raise ValueError(f"knn k must be >= 1, got {k}")
        self.k, self.metric, self.chunk, self.smoothing = k, metric, chunk, smoothing
        # The memorised training set: buffers, so state_dict() carries it.
        self.register_buffer("train_x", torch.empty(0, 0))
        self.register_buffer("train_y", torch.empty(0, dtype=torch.long))

    def fit(self, x: Tensor, y: Tensor) -> None:
        self.train_x = x.detach().flatten(1).float().clone()
        self.train_y = y.detach().long().clone()

    def distances(self, q: Tensor) -> Tensor:
        """(len(q), len(train)) distances; L2 via the |a|^2 - 2ab + |b|^2 expansion (one matmul)."""
        if self.metric == "l1":
            return torch.cdist(q, self.train_x, p=1.0)
        sq = (q * q).sum(1, keepdim=True) - 2 * q @ self.train_x.T + (self.train_x * self.train_x).sum(1)
        return sq.clamp_min_(0).sqrt_()

    def scores(self, q: Tensor) -> Tensor:
        n = q.shape[0]
        if self.train_x.numel() == 0:
            return torch.full((n, self.num_classes), -math.log(self.num_classes), device=q.device)
        k = min(self.k, len(self.train_y))
        votes = []
        for start in range(0, n, self.chunk):
            d = self.distances(q[start : start + self.chunk])
            nearest = d.topk(k, dim=1, largest=False).indices
            labels = self.train_y[nearest]
            votes.append(torch.zeros(len(labels), self.num_classes, device=q.device).scatter_add_(
                1, labels, torch.ones_like(labels, dtype=torch.float)))
        v = torch.cat(votes)
        a = self.smoothing
        return torch.log((v + a) / (k + self.num_classes * a))


class GaussianNaiveBayes(FittedClassifier):
    """Gaussian naive Bayes: one diagonal Gaussian per class over the pixels.

    As scikit-learn's GaussianNB, `var_smoothing` x the largest pixel variance is added to every
    variance (constant pixels would otherwise give infinite densities). Scores are log-posteriors.
    """

    def __init__(self, num_classes: int, dim: int, var_smoothing: float = 1e-9) -> None:
        super().__init__(num_classes, dim)
        self.var_smoothing = var_smoothing
        self.register_buffer("means", torch.zeros(num_classes, dim))
        self.register_buffer("variances", torch.ones(num_classes, dim))
        self.register_buffer("log_priors", torch.full((num_classes,), -math.log(num_classes)))

    def fit(self, x: Tensor, y: Tensor) -> None:
        x = x.detach().flatten(1).double()
        y = y.detach().long()
        eps = self.var_smoothing * x.var(0, unbiased=False).max()
        counts = torch.bincount(y, minlength=self.num_classes).double()
        means = torch.zeros(self.num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
        means /= counts.clamp_min(1)[:, None]
        sq = torch.zeros_like(means).index_add_(0, y, x * x) / counts.clamp_min(1)[:, None]
        self.means = means.float()
        self.variances = (sq - means * means).clamp_min(0).add(eps).float()
        self.log_priors = torch.log(counts / counts.sum()).float()

    def scores(self, x: Tensor) -> Tensor:
        # log N(x | mu, var) summed over pixels, expanded so it is one matmul for the whole batch.
        inv = 1.0 / self.variances
        joint = (
            -0.5 * (x * x) @ inv.T
            + x @ (self.means * inv).T
            - 0.5 * (self.means * self.means * inv).sum(1)
            - 0.5 * torch.log(2 * math.pi * self.variances).sum(1)
            + self.log_priors
        )
        return joint - torch.logsumexp(joint, dim=1, keepdim=True)


@register("baselines", 1967, PAPER_KNN, trained_by="fit")
def knn(num_classes: int, in_channels: int = 3, image_size: int = 32, k: int = 5, metric: str = "l2") -> nn.Module:
    return KNearestNeighbors(num_classes, in_channels * image_size * image_size, k=k, metric=metric)


@register("baselines", 1967, PAPER_KNN, trained_by="fit")
def knn_l1(num_classes: int, in_channels: int = 3, image_size: int = 32, k: int = 5) -> nn.Module:
    return KNearestNeighbors(num_classes, in_channels * image_size * image_size, k=k, metric="l1")


@register("baselines", 1967, PAPER_KNN, trained_by="fit")
def nearest_neighbor(num_classes: int, in_channels: int = 3, image_size: int = 32, metric: str = "l1") -> nn.Module:
    """The 1-NN of the lecture (L1 distance)."""
    return KNearestNeighbors(num_classes, in_channels * image_size * image_size, k=1, metric=metric)


@register("baselines", 1973, PAPER_BAYES, trained_by="fit")
def bayes(num_classes: int, in_channels: int = 3, image_size: int = 32, var_smoothing: float = 1e-9) -> nn.Module:
    return GaussianNaiveBayes(num_classes, in_channels * image_size * image_size, var_smoothing)


class LinearSoftmax(Classifier):
    """Multinomial logistic regression on the pixels: scores = W x + b."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def representation(self, x: Tensor) -> Tensor:
        return x


class MultilayerPerceptron(Classifier):
    """Fully connected ReLU layers on the pixels (torchvision.ops.MLP), dropout between them.

    The features are the last hidden layer's activations; the head is the output layer."""

    def __init__(self, num_classes: int, dim: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.1) -> None:
        super().__init__()
        layers = list(MLP(dim, [*hidden, num_classes], activation_layer=nn.ReLU, dropout=dropout))
        # torchvision's MLP puts dropout after the output layer too; logits must not be dropped.
        layers[-1] = nn.Identity()
        self.mlp = nn.Sequential(*layers)  # a plain Sequential, so it slices into features and head
        self.classifier_path = f"mlp.{len(self.mlp) - 2}"

    def forward_features(self, x: Tensor) -> Tensor:
        return self.mlp[:-2](x.flatten(1))

    def representation(self, x: Tensor) -> Tensor:
        return x


@register("baselines", 1958, "Rosenblatt / softmax regression: the linear classifier of cs231n")
def linear(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return LinearSoftmax(num_classes, in_channels * image_size * image_size)


@register("baselines", 1986, "Rumelhart, Hinton & Williams, Learning representations by back-propagating errors")
def mlp(num_classes: int, in_channels: int = 3, image_size: int = 32, hidden: tuple[int, ...] | list[int] = (512, 256),
        dropout: float = 0.1) -> nn.Module:
    return MultilayerPerceptron(num_classes, in_channels * image_size * image_size, tuple(hidden), dropout)
