"""Concept learning (Mitchell, Machine Learning 1997, ch. 2): Find-S and candidate elimination.

Every pixel becomes a boolean attribute, on when its normalised value is above `threshold` (0: the
training split's mean). A hypothesis is a conjunction of literals, one constraint per attribute:
the attribute must be 1, must be 0, may be anything ("?"), or nothing satisfies it (the empty
hypothesis "∅", which matches no instance). It is held as two boolean masks over the attributes,
`ones` (must be 1) and `zeros` (must be 0): "?" is neither, "∅" both.

A class is a concept, learnt one-vs-rest: its training images are the positive examples, every
other image a negative one.

- Find-S keeps the most specific hypothesis S that covers every positive: starting from ∅, each
  positive generalises it minimally, so an attribute keeps its literal only while every positive
  agrees on it. Negatives are ignored.
- Candidate elimination keeps the version space, every conjunction consistent with the examples,
  through its boundaries: S (as Find-S) and G, the most general consistent hypotheses, which each
  negative specialises minimally (one more of S's literals, one that excludes the negative).
  G is bounded: at most `max_general` members, the ones with the fewest literals, and at most
  `max_general` specialisations of a member per negative, those whose literal excludes the most
  negatives; past the bound G under-approximates the boundary (every member kept is still
  consistent with the data).

On noisy data no conjunction is consistent with the examples: some negative satisfies every
literal of S, and the version space collapses (S and G would both become empty). The model then
records `collapsed` for that class and falls back to S alone (Find-S's hypothesis), so it still
ranks the classes.

Scores, usable as logits: a hypothesis scores an image by -(literals violated) + (literals
satisfied) / (2D + 1): fewest violated literals first (0: the hypothesis covers the image), then
the most satisfied (a more specific match beats a more general one). Find-S scores with S;
candidate elimination with the mean over S and the members of G (the boundary hypotheses vote).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.classifier import FittedClassifier
from models.registry import register

PAPER = "Mitchell, Machine Learning (1997), ch. 2: concept learning and the general-to-specific ordering"


def violated(x: Tensor, ones: Tensor, zeros: Tensor) -> Tensor:
    """(N, H) number of the H hypotheses' literals that the N boolean instances violate."""
    xf = x.float()
    return ones.sum(1) - xf @ ones.float().T + xf @ zeros.float().T


def match_scores(x: Tensor, ones: Tensor, zeros: Tensor) -> Tensor:
    """(N, H): -violated + satisfied / (2D + 1), so violations rank first, then specificity."""
    bad = violated(x, ones, zeros)
    satisfied = (ones.sum(1) + zeros.sum(1)) - bad
    return -bad + satisfied / (2 * x.shape[1] + 1)


class FindS(FittedClassifier):
    """Per class, the most specific conjunction covering its training images (Table 2.3)."""

    def __init__(self, num_classes: int, dim: int, threshold: float = 0.0) -> None:
        super().__init__(num_classes, dim)
        self.threshold = threshold
        # S of each class, ∅ until fitted: every attribute both "must be 1" and "must be 0".
        self.register_buffer("specific_ones", torch.ones(num_classes, dim, dtype=torch.bool))
        self.register_buffer("specific_zeros", torch.ones(num_classes, dim, dtype=torch.bool))

    def binarise(self, x: Tensor) -> Tensor:
        return x.flatten(1) > self.threshold

    def fit(self, x: Tensor, y: Tensor) -> None:
        b, y = self.binarise(x.detach()), y.detach().long()
        # Generalising ∅ minimally over the positives, in any order, ends with the attributes on
        # which they all agree; a class without positives keeps ∅ (all() of nothing is True).
        self.specific_ones = torch.stack([b[y == c].all(0) for c in range(self.num_classes)])
        self.specific_zeros = torch.stack([(~b[y == c]).all(0) for c in range(self.num_classes)])

    def scores(self, x: Tensor) -> Tensor:
        return match_scores(self.binarise(x), self.specific_ones, self.specific_zeros)


class CandidateElimination(FindS):
    """Per class, the version space's boundaries S and G (Table 2.5), G bounded by `max_general`."""

    def __init__(self, num_classes: int, dim: int, threshold: float = 0.0, max_general: int = 32) -> None:
        super().__init__(num_classes, dim, threshold)
        if max_general < 1:
            raise ValueError(f"candidate_elimination max_general must be >= 1, got {max_general}")
        self.max_general = max_general
        # G of each class, padded to the largest; G starts as the single all-"?" hypothesis.
        self.register_buffer("general_ones", torch.zeros(num_classes, 1, dim, dtype=torch.bool))
        self.register_buffer("general_zeros", torch.zeros(num_classes, 1, dim, dtype=torch.bool))
        self.register_buffer("general_count", torch.ones(num_classes, dtype=torch.long))
        self.register_buffer("collapsed", torch.zeros(num_classes, dtype=torch.bool))

    def fit(self, x: Tensor, y: Tensor) -> None:
        super().fit(x, y)  # S, from the positives
        b, y = self.binarise(x.detach()), y.detach().long()
        boundaries, collapsed = [], []
        for c in range(self.num_classes):
            g = self.general_boundary(self.specific_ones[c], self.specific_zeros[c], b[y != c], (y == c).any())
            collapsed.append(g is None)
            boundaries.append(g if g is not None else (b.new_zeros(0, self.dim), b.new_zeros(0, self.dim)))
        size = max(1, max(len(ones) for ones, _ in boundaries))
        pad = lambda t: torch.cat([t, t.new_zeros(size - len(t), self.dim)])  # noqa: E731
        self.general_ones = torch.stack([pad(ones) for ones, _ in boundaries])
        self.general_zeros = torch.stack([pad(zeros) for _, zeros in boundaries])
        self.general_count = torch.tensor([len(ones) for ones, _ in boundaries], device=b.device)
        self.collapsed = torch.tensor(collapsed, device=b.device)

    def general_boundary(self, s_ones: Tensor, s_zeros: Tensor, negatives: Tensor,
                         has_positives: Tensor) -> tuple[Tensor, Tensor] | None:
        """G after every negative, given S (the positives seen first: the version space does not
        depend on the order). None when the version space collapses."""
        if not has_positives:  # S = ∅ matches nothing: nothing to learn, G left empty
            return negatives.new_zeros(0, self.dim), negatives.new_zeros(0, self.dim)
        if (violated(negatives, s_ones[None], s_zeros[None]) == 0).any():
            return None  # a negative satisfies all of S: no conjunction covers the positives and not it
        ones = torch.zeros(1, self.dim, dtype=torch.bool, device=negatives.device)
        zeros = torch.zeros_like(ones)
        # How many negatives each of S's literals excludes: where a negative offers more
        # specialisations than the bound, the most excluding ones are kept.
        excludes = ((s_ones & ~negatives) | (s_zeros & negatives)).sum(0)
        for x in negatives:
            covers = violated(x[None], ones, zeros)[0] == 0
            if not covers.any():
                continue
            # Each member that covers x is replaced by its minimal specialisations that exclude x
            # and stay more general than S: itself plus one of S's literals that x violates.
            flip = ((s_ones & ~x) | (s_zeros & x)).nonzero().flatten()
            flip = flip[excludes[flip].argsort(descending=True, stable=True)[: self.max_general]]
            k = len(flip)
            new_ones, new_zeros = ones[covers].repeat_interleave(k, 0), zeros[covers].repeat_interleave(k, 0)
            rows, cols = torch.arange(len(new_ones), device=x.device), flip.repeat(int(covers.sum()))
            new_ones[rows, cols], new_zeros[rows, cols] = s_ones[cols], s_zeros[cols]
            ones, zeros = self.most_general(torch.cat([ones[~covers], new_ones]), torch.cat([zeros[~covers], new_zeros]))
        return ones, zeros

    def most_general(self, ones: Tensor, zeros: Tensor) -> tuple[Tensor, Tensor]:
        """Drop every hypothesis more specific than (or equal to) an earlier-ranked one, then keep
        at most `max_general`, fewest literals first."""
        literals = torch.cat([ones, zeros], 1)
        order = literals.sum(1).argsort(stable=True)[: 8 * self.max_general]  # bound the pairwise check
        literals = literals[order].float()
        size = literals.sum(1)
        # contains[a, b]: every literal of b is in a, i.e. a is at least as specific as b.
        contains = (literals @ literals.T) == size[None, :]
        earlier = torch.ones_like(contains).triu(1).T  # b ranks before a
        keep = ~(contains & earlier).any(1)
        kept = order[keep][: self.max_general]
        return ones[kept], zeros[kept]

    def scores(self, x: Tensor) -> Tensor:
        b = self.binarise(x)
        c, size, d = self.general_ones.shape
        s = match_scores(b, self.specific_ones, self.specific_zeros)
        g = match_scores(b, self.general_ones.reshape(c * size, d), self.general_zeros.reshape(c * size, d))
        member = torch.arange(size, device=b.device)[None, :] < self.general_count[:, None]  # (C, size)
        g = (g.view(-1, c, size) * member).sum(-1)
        return (s + g) / (1 + self.general_count)


@register("Concept learning", 1997, PAPER, trained_by="fit")
def find_s(num_classes: int, in_channels: int = 3, image_size: int = 32, threshold: float = 0.0) -> nn.Module:
    return FindS(num_classes, in_channels * image_size * image_size, threshold)


@register("Concept learning", 1997, PAPER, trained_by="fit")
def candidate_elimination(num_classes: int, in_channels: int = 3, image_size: int = 32, threshold: float = 0.0,
                          max_general: int = 32) -> nn.Module:
    return CandidateElimination(num_classes, in_channels * image_size * image_size, threshold, max_general)
