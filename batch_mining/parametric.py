"""Parametric (PADS-style) distance-distribution sampling of negatives.

Roth, Milbich, Ommer. "PADS: Policy-Adapted Sampling for Visual Similarity Learning." CVPR 2020.
https://arxiv.org/abs/2003.11113

The distance support [lo, hi] = ``--miner_parametric_support_lim`` ([0.0, 2.0]) is cut into
K = ``--miner_parametric_n_support`` (30) equal bins with a weight w_k per bin. For an anchor a
with at least one positive and one negative, a negative n is drawn with

    p(n | a) ∝ w_{bin(d(a, n))}   over the negatives with lo ≤ d(a, n) < hi,

(negatives outside the support get weight 0; if an anchor has no negative with positive weight,
its negative is uniform among all its negatives) and the positive uniformly among the other
samples of its class. One triplet per anchor. The bin weights come from
``--miner_parametric_mode``, with c_k the bin centres and t_k = (c_k − lo)/(hi − lo) ∈ (0, 1):

* ``uniform``:   w_k = 1 (uniform negatives inside the support);
* ``hards``:     w_k = 1 − t_k (closer negatives more likely);
* ``semihards``: w_k = exp(−(t_k − 1/2)² / (2 · (1/6)²)) (mid-range distances);
* ``veryhards``: w_k = 1 for t_k < 1/4, else 0 (only the closest quarter of the support).

PADS adapts the bin weights during training with a policy; a training loop can do so by calling
``set_distribution(weights)``.

Deviations from the reference implementation (which was unusable): the flags exist; the
outside-support mask is an OR of the two conditions (the reference's AND was always empty); the
weight vector always has K entries; no debugger call; vectorised on the batch's device.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Literal

import torch

from batch_mining.base import BatchMiner, anchors_with_pos_and_neg, sample_rows, sample_uniform
from criteria._common import TRIPLETS, pairwise_distances
from utilities.errors import ConfigError

Mode = Literal["uniform", "hards", "semihards", "veryhards"]
MODES: tuple[str, ...] = typing.get_args(Mode)


def mode_weights(mode: str, n_support: int) -> torch.Tensor:
    """The K bin weights of ``mode`` (see the module docstring)."""
    t = (torch.arange(n_support, dtype=torch.float64) + 0.5) / n_support
    if mode == "uniform":
        return torch.ones_like(t)
    if mode == "hards":
        return 1.0 - t
    if mode == "semihards":
        return torch.exp(-((t - 0.5) ** 2) / (2.0 * (1.0 / 6.0) ** 2))
    if mode == "veryhards":
        return (t < 0.25).double()
    raise ConfigError(f"unknown --miner_parametric_mode '{mode}'; choose from: {', '.join(MODES)}")


class ParametricMiner(BatchMiner):
    """Negatives drawn from a distribution over distance bins (PADS-style)."""

    name = "parametric"
    tuple_kind = TRIPLETS

    def __init__(
        self,
        *,
        seed: int,
        mode: Annotated[Mode, "bin weights over the support"] = "uniform",
        n_support: Annotated[int, "number of distance bins K"] = 30,
        support_lim: Annotated[list[float], "distance support [lo, hi)"] = [0.0, 2.0],  # noqa: B006 (never mutated)
    ) -> None:
        super().__init__(seed=seed)
        self.mode, self.n_support, self.support_lim = mode, n_support, list(support_lim)
        if len(self.support_lim) != 2:
            raise ConfigError(f"--miner_parametric_support_lim takes two numbers lo hi; got {support_lim}")
        lo, hi = (float(v) for v in self.support_lim)
        if n_support < 1 or not lo < hi or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(
                f"--miner_parametric_n_support must be ≥ 1 and --miner_parametric_support_lim an "
                f"interval lo < hi; got {n_support} and {support_lim}"
            )
        self.lo, self.hi = lo, hi
        self.set_distribution(mode_weights(mode, n_support))

    def set_distribution(self, weights: torch.Tensor) -> None:
        """Replace the K bin weights (non-negative, not all zero), e.g. from a PADS policy."""
        weights = torch.as_tensor(weights, dtype=torch.float32).detach().cpu()
        if weights.shape != (self.n_support,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"need {self.n_support} non-negative bin weights with positive sum")
        self.bin_weights = weights

    def negative_weights(self, dist: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """(B, B) unnormalised sampling weights of each negative for each anchor."""
        k = self.n_support
        bins = ((dist - self.lo) / (self.hi - self.lo) * k).floor().long()
        outside = (dist < self.lo) | (dist >= self.hi)
        w = self.bin_weights.to(dist.device)[bins.clamp(0, k - 1)]
        return w.masked_fill(outside | ~neg, 0.0)

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        dist = pairwise_distances(batch.float())
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        w = self.negative_weights(dist[anchors], neg[anchors])
        w = torch.where(w.sum(1, keepdim=True) > 0, w, neg[anchors].float())
        positives = sample_uniform(pos[anchors], gen)
        negatives = sample_rows(w, gen)
        return anchors, positives, negatives
