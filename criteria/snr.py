"""Signal-to-noise-ratio (SNR) triplet loss.

Yuan, Chen, Yang, Wang, Wang, Zhang. "Signal-To-Noise Ratio: A Robust Distance Metric for Deep
Metric Learning." CVPR 2019. https://arxiv.org/abs/1904.02616

The SNR distance of b from anchor a is the variance of the "noise" b − a over the variance of the
"signal" a, both over the D embedding dimensions (unbiased, N − 1):

    d_S(a, b) = Var(x_b − x_a) / Var(x_a)

For mined triplets T with ℓ_t = [d_S(a, p) − d_S(a, n) + m]₊:

    L = Σ_T ℓ_t / max(1, #{ℓ_t > 0}) + λ · mean_i |Σ_d x_{i,d}|

m = ``--loss_snr_margin`` (0.2), λ = ``--loss_snr_reg_lambda`` (0.005; the paper's zero-mean
regulariser, averaged over the batch). This equals pytorch-metric-learning's TripletMarginLoss with
SNRDistance, AvgNonZeroReducer and a ZeroMeanRegularizer of weight λ.

Deviations from the reference implementation: no 0/0 = NaN when no triplet is active (the hinge
part is then 0); λ is applied whatever the miner (the reference silently set λ = 0 for a miner named
"distance" only, so the paper's ρ-distance variants trained with a regulariser their baseline did
not have); the regulariser averages over the batch, not over the (repeated) anchors; vectorised;
nothing mined gives a differentiable 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from criteria._common import TRIPLETS, PairBasedLoss, keep_anchors, zero_loss


@dataclass
class SnrHparams:
    margin: float = field(default=0.2, metadata={"help": "margin m between SNR distances"})
    reg_lambda: float = field(default=0.005, metadata={"help": "λ of the zero-mean regulariser"})


def snr_distance(anchors: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Var(others − anchors) / Var(anchors), row-wise over the embedding dimensions."""
    return (others - anchors).var(dim=1) / anchors.var(dim=1)


class SnrLoss(PairBasedLoss):
    """SNR-distance triplet loss (Yuan et al. 2019)."""

    name = "snr"
    Hparams = SnrHparams
    requires_miner = True
    tuple_kind = TRIPLETS
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), positives/negatives from ``ref``."""
        anchors, positives, negatives = keep_anchors(self.batchminer(ref, ref_labels), TRIPLETS, len(queries))
        if len(anchors) == 0:
            return zero_loss(queries)
        xa = queries[anchors]
        hinge = torch.relu(
            snr_distance(xa, ref[positives]) - snr_distance(xa, ref[negatives]) + self.hp.margin
        )
        triplet = hinge.sum() / (hinge > 0).sum().clamp_min(1)
        return triplet + self.hp.reg_lambda * queries.sum(dim=1).abs().mean()
