"""Distance-weighted sampling.

Wu, Manmatha, Smola, Krähenbühl. "Sampling Matters in Deep Embedding Learning." ICCV 2017, §4.
https://arxiv.org/abs/1706.07567

On the unit sphere S^{n−1} the pairwise distance d of uniformly spread points has density
q(d) ∝ d^{n−2} (1 − d²/4)^{(n−3)/2}. Negatives are drawn with weights ∝ 1/q(d), which spreads the
sampled distances evenly instead of concentrating them around √2:

    log w(a, n) = (2 − n) log d − ((n − 3)/2) log(1 − d²/4),   d = clip(d(a, n), λ_low, 2 − ε)

with n = embedding dimension, λ_low = ``--miner_distance_lower_cutoff`` (0.5), and w = 0 for
negatives farther than ``--miner_distance_upper_cutoff`` (1.4; the paper's "nonzero loss cutoff":
beyond β + α they carry no margin-loss gradient). If every negative of an anchor lies beyond the
cut-off, its negative is drawn uniformly. The positive is uniform among the anchor's other
same-class samples; anchors without one are skipped.

Deviations from the reference implementation: the upper cut-off is implemented (it was commented
out); d is clipped below 2 so distances ≥ 2 cannot give NaN weights; inputs must be L2-normalised
(checked, with a clear error) since the weights are only meaningful on the sphere; an anchor is
never its own positive; sampling is one batched ``torch.multinomial`` on the batch's device instead
of B host round-trips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from batch_mining.base import BatchMiner, label_masks, pairwise_distances, sample_rows


@dataclass
class DistanceHparams:
    lower_cutoff: float = field(default=0.5, metadata={"help": "distances are clipped below at λ_low"})
    upper_cutoff: float = field(default=1.4, metadata={"help": "negatives beyond this get weight 0"})
    seed: int = field(default=0, metadata={"global": "seed"})


def inverse_density_log_weights(dist: torch.Tensor, dim: int, lower_cutoff: float) -> torch.Tensor:
    """log(1/q(d)) for distances on S^{dim−1}, clipped to [lower_cutoff, 2 − 1e-4]."""
    d = dist.clamp(min=lower_cutoff, max=2.0 - 1e-4)
    return (2.0 - dim) * torch.log(d) - ((dim - 3.0) / 2.0) * torch.log1p(-0.25 * d * d)


class DistanceMiner(BatchMiner):
    """Distance-weighted negatives (Wu et al. 2017), one triplet per anchor."""

    name = "distance"
    tuple_kind = "triplets"
    Hparams = DistanceHparams

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)

    def negative_weights(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, B) sampling probabilities of each negative for each anchor (rows sum to 1 or 0)."""
        norms = batch.norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise ValueError(
                f"the '{self.name}' miner needs L2-normalised embeddings (an --arch with _normalize); "
                f"got norms in [{norms.min().item():.3f}, {norms.max().item():.3f}]"
            )
        dist = pairwise_distances(batch.double())
        _, neg = label_masks(labels)
        log_w = inverse_density_log_weights(dist, batch.shape[1], self.hp.lower_cutoff)
        inside = neg & (dist < self.hp.upper_cutoff)
        log_w = log_w.masked_fill(~inside, float("-inf"))
        weights = torch.softmax(log_w, dim=1).nan_to_num(0.0)  # all -inf rows -> NaN -> 0
        fallback = neg.double() / neg.sum(1, keepdim=True).clamp_min(1)
        return torch.where(inside.any(1, keepdim=True), weights, fallback)

    def mine(self, batch: torch.Tensor, labels: torch.Tensor):
        gen = self.generator(batch.device)
        pos, neg = label_masks(labels)
        weights = self.negative_weights(batch, labels)
        anchors = torch.nonzero(pos.any(1) & neg.any(1)).squeeze(1)
        positives = sample_rows(pos[anchors].double(), gen)
        negatives = sample_rows(weights[anchors], gen)
        return anchors, positives, negatives
