"""Distance-weighted sampling.

Wu, Manmatha, Smola, Krähenbühl. "Sampling Matters in Deep Embedding Learning." ICCV 2017, §4.
https://arxiv.org/abs/1706.07567

On the unit sphere S^{n−1} the pairwise distance d of uniformly spread points has density
q(d) ∝ d^{n−2} (1 − d²/4)^{(n−3)/2}. Negatives are drawn with weights ∝ 1/q(d), which spreads the
sampled distances evenly instead of concentrating them around √2:

    log w(a, n) = (2 − n) log d − ((n − 3)/2) log(1 − d²/4),   d = clip(d(a, n), λ_low, 2 − 1e-4)

with n = embedding dimension, λ_low = ``--miner_distance_lower_cutoff`` (0.5), and w = 0 for
negatives at distance ≥ ``--miner_distance_upper_cutoff`` (1.4), the paper's "nonzero loss
cutoff": beyond β + α they carry no margin-loss gradient. If every negative of an anchor lies
beyond the cut-off, its negative is drawn uniformly among all its negatives. Every sample with at
least one positive and one negative in the batch is an anchor; its positive is uniform among the
other samples of its class. One triplet per anchor.

Deviations from the reference implementation: the upper cut-off is implemented (it was commented
out); d is clipped below 2 so distances ≥ 2 (antipodal points, rounding) cannot give NaN weights;
inputs must be L2-normalised (checked, with a clear error) since the weights are only meaningful on
the sphere; an anchor is never its own positive (anchors without a positive are skipped); the
weights stay in log space (no overflow for large n); all negatives are drawn at once with the
Gumbel-max trick (an exact categorical draw) on the batch's device instead of B host round-trips.
"""

from __future__ import annotations

from typing import Annotated

import torch

from batch_mining.base import (
    BatchMiner,
    anchors_with_pos_and_neg,
    check_normalized,
    sample_logits,
    sample_uniform,
)
from criteria._common import TRIPLETS, pairwise_distances, same_label_masks

# the cut-offs' help texts and types, shared with the other distance-weighted miners
LOWER_CUTOFF_HELP = "distances are clipped below at λ_low"
UPPER_CUTOFF_HELP = "negatives at this distance or farther get weight 0"
LowerCutoff = Annotated[float, LOWER_CUTOFF_HELP]
UpperCutoff = Annotated[float, UPPER_CUTOFF_HELP]


def inverse_density_log_weights(dist: torch.Tensor, dim: int, lower_cutoff: float) -> torch.Tensor:
    """log(1/q(d)) for distances on S^{dim−1}, with d clipped to [lower_cutoff, 2 − 1e-4]."""
    d = dist.clamp(min=lower_cutoff, max=2.0 - 1e-4)
    return (2.0 - dim) * torch.log(d) - ((dim - 3.0) / 2.0) * torch.log1p(-0.25 * d * d)


def negative_logits(
    batch: torch.Tensor, neg: torch.Tensor, lower_cutoff: float, upper_cutoff: float
) -> torch.Tensor:
    """(B, B) log of the unnormalised distance-weighted sampling weights of each negative.

    Entries that are never drawn are −inf; an anchor whose negatives all lie beyond the upper
    cut-off gets 0 (uniform) on all its negatives; an anchor without negatives is all −inf.
    """
    dist = pairwise_distances(batch.float())
    log_w = inverse_density_log_weights(dist, batch.shape[1], lower_cutoff)
    inside = neg & (dist < upper_cutoff)
    allowed = torch.where(inside.any(1, keepdim=True), inside, neg)
    log_w = torch.where(inside.any(1, keepdim=True), log_w, torch.zeros_like(log_w))
    return log_w.masked_fill_(~allowed, float("-inf"))


def negative_probabilities(
    batch: torch.Tensor, neg: torch.Tensor, lower_cutoff: float, upper_cutoff: float
) -> torch.Tensor:
    """(B, B) sampling probabilities of each negative for each anchor (rows sum to 1, or 0)."""
    return torch.softmax(negative_logits(batch, neg, lower_cutoff, upper_cutoff), 1).nan_to_num_(0.0)


class DistanceMiner(BatchMiner):
    """Distance-weighted negatives (Wu et al. 2017), one triplet per anchor."""

    name = "distance"
    tuple_kind = TRIPLETS

    def __init__(
        self, *, seed: int, lower_cutoff: LowerCutoff = 0.5, upper_cutoff: UpperCutoff = 1.4
    ) -> None:
        super().__init__(seed=seed)
        self.lower_cutoff = lower_cutoff
        self.upper_cutoff = upper_cutoff

    def negative_probabilities(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, B) sampling probabilities of each negative for each anchor (rows sum to 1 or 0)."""
        check_normalized(batch, self.name)
        _, neg = same_label_masks(labels)
        return negative_probabilities(batch, neg, self.lower_cutoff, self.upper_cutoff)

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        check_normalized(batch, self.name)
        logits = negative_logits(batch, neg, self.lower_cutoff, self.upper_cutoff)
        positives = sample_uniform(pos[anchors], gen)
        negatives = sample_logits(logits[anchors], gen)
        return anchors, positives, negatives
