"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), as in the paper's Fig. 2 and Appendix A.

C1 conv 6@28x28 -> S2 trainable subsampling -> C3 conv 16@10x10 with the partial connection table
(Table I) -> S4 subsampling -> C5 conv 120@1x1 -> F6 84 -> output. Every layer up to F6 is squashed
by the scaled tanh f(a) = 1.7159 tanh(2a/3). The output is a trainable linear layer by default, or
the paper's Euclidean RBF units with fixed +-1 centres (`output="rbf"`).

`activation` swaps the squashing function for the plain tanh or the ReLU, everything else (the
initialisation included) unchanged: the small CNN of the ReLU-vs-tanh experiment (Krizhevsky et al.
2012, Fig. 1; experiments/relu_vs_tanh.yaml).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import require_size
from models.classifier import Classifier
from models.registry import register

PAPER = "LeCun et al., Gradient-Based Learning Applied to Document Recognition (1998)"

# Table I: which of the six S2 maps feed each of the sixteen C3 maps. Breaking the symmetry
# forces the maps to learn different features, and keeps the connection count down.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def initial_bound(fan_in: int) -> float:
    """Weights start uniform in +-bound.

    Appendix A draws them in +-2.4/F_i (F_i the fan-in) to keep the sums in the tanh's linear
    range. Read literally that starves the deep layers (C5: F_i = 400, sums ~1 % of the range) and
    plain SGD stalls at chance; +-2.4/sqrt(F_i) is the variance ~1/F_i rule of LeCun et al.'s
    "Efficient BackProp" (1998), the paper's intent.
    """
    return 2.4 / fan_in**0.5


A, S = 1.7159, 2.0 / 3.0  # Appendix A: f(a) = A tanh(S a), so that f(+-1) = +-1


class _ScaledTanhFunction(torch.autograd.Function):
    """A tanh(S x) computed as 2A sigmoid(2S x) - A, the same function.

    Why: on CPU torch's tanh kernel is ~4x slower than its sigmoid (AVX2 builds), and LeNet-5 spends
    a third of its training step squashing; this way the step is ~10 % faster. The backward needs only
    the output: f'(x) = S (A - f(x)^2 / A)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sigmoid(x * (2 * S)).mul_(2 * A).sub_(A)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.addcmul(torch.full((), A * S, dtype=y.dtype, device=y.device), y, y, value=-S / A).mul_(grad)


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (Appendix A): f(+-1) = +-1, max gain near the origin."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _ScaledTanhFunction.apply(x)
        return A * torch.tanh(x * S)  # inference and export: the plain ops


# The squashing function of every layer up to F6: the paper's, or the plain tanh and the ReLU.
ACTIVATIONS: dict[str, type[nn.Module]] = {"scaled_tanh": ScaledTanh, "tanh": nn.Tanh, "relu": nn.ReLU}


class Subsampling(nn.Module):
    """S2/S4: the four inputs of a 2x2 window are added, multiplied by one trainable coefficient
    per map, and a trainable bias per map is added (2 parameters per map).

    That is a depthwise 2x2 convolution with stride 2 whose four weights are the one coefficient:
    one fused kernel (forward and backward) instead of a pooling and two broadcasts."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Starts at 1/4: the 2x2 sum begins as an average.
        self.coefficient = nn.Parameter(torch.full((channels,), 0.25))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        c = self.coefficient.numel()
        kernel = self.coefficient.view(c, 1, 1, 1).expand(c, 1, 2, 2)
        return F.conv2d(x, kernel, self.bias, stride=2, groups=c)


class C3Convolution(nn.Module):
    """5x5 convolution where output map j sees only the input maps C3_TABLE[j] (60 of 96 links).

    Only the connected kernels are parameters (60 x 25 weights + 16 biases = 1,516); they are
    scattered into a dense, mostly zero kernel so the layer is one ordinary convolution.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...] = C3_TABLE, in_maps: int = 6, kernel_size: int = 5) -> None:
        super().__init__()
        outs = [j for j, ins in enumerate(table) for _ in ins]
        ins = [i for inputs in table for i in inputs]
        self.shape = (len(table), in_maps, kernel_size, kernel_size)
        self.register_buffer("out_index", torch.tensor(outs), persistent=False)
        self.register_buffer("in_index", torch.tensor(ins), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(ins), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(len(table)))
        self.table = table
        self.reset_parameters()

    def reset_parameters(self) -> None:
        start = 0
        for j, inputs in enumerate(self.table):  # map j's kernels are rows start .. start+len(inputs)
            bound = initial_bound(len(inputs) * self.shape[-1] * self.shape[-2])
            nn.init.uniform_(self.weight[start : start + len(inputs)], -bound, bound)
            nn.init.uniform_(self.bias[j : j + 1], -bound, bound)
            start += len(inputs)

    def dense_weight(self) -> Tensor:
        w = self.weight.new_zeros(self.shape)
        return w.index_put((self.out_index, self.in_index), self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class EuclideanRBF(nn.Module):
    """Output layer: y_i = sum_j (x_j - w_ij)^2, with fixed centres w_i in {-1, +1}^84.

    The paper hand-draws the centres as 7x12 bitmaps of the characters, noting random +-1 codes
    would also do; we draw them at random (fixed seed) so any number of classes works. The scores
    returned are -y_i: the closest centre has the largest logit.
    """

    def __init__(self, in_features: int, num_classes: int, seed: int = 1998) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        centres = torch.randint(0, 2, (num_classes, in_features), generator=g).float() * 2 - 1
        self.in_features = in_features
        self.register_buffer("centres", centres)  # fixed, not trained

    def forward(self, x: Tensor) -> Tensor:
        return -((x[:, None, :] - self.centres[None]) ** 2).sum(-1)


class LeNet5(Classifier):
    """Features: C1 ... C5 (120 maps of 1x1); head: F6 (84 units) and the output layer."""

    classifier_path = "output"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, output: str = "linear",
                 activation: str = "scaled_tanh") -> None:
        super().__init__()
        if output not in ("linear", "rbf"):
            raise ValueError(f"lenet5 output must be 'linear' or 'rbf', got {output!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"lenet5 activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        squash = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), squash(),  # C1: 6@28x28
            Subsampling(6), squash(),                 # S2: 6@14x14
            C3Convolution(), squash(),                # C3: 16@10x10
            Subsampling(16), squash(),                # S4: 16@5x5
            nn.Conv2d(16, 120, 5), squash(),          # C5: 120@1x1
        )
        self.f6 = nn.Sequential(nn.Linear(120, 84), squash())
        self.output = EuclideanRBF(84, num_classes) if output == "rbf" else nn.Linear(84, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = initial_bound(m.weight[0].numel())
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.uniform_(m.bias, -bound, bound)

    def representation(self, x: Tensor) -> Tensor:
        return self.f6(x.flatten(1))

    def reset_classifier(self, num_classes: int) -> None:
        if isinstance(self.output, EuclideanRBF):
            self.output = EuclideanRBF(self.output.in_features, num_classes).to(self.output.centres.device)
        else:
            super().reset_classifier(num_classes)


@register("LeNet-5", 1998, PAPER, scale="small", in_channels=1)
def lenet5(num_classes: int, in_channels: int = 1, image_size: int = 32, output: str = "linear",
           activation: Literal["scaled_tanh", "tanh", "relu"] = "scaled_tanh") -> nn.Module:
    """32x32 input (MNIST's 28x28 digits padded, as in the paper); C5 then sees exactly 5x5.
    `activation`: scaled_tanh (the paper's), tanh or relu."""
    require_size("lenet5", image_size, (32,))
    return LeNet5(num_classes, in_channels, output, activation)


