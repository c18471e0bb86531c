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

from typing import Annotated

import torch
from torch import nn

from ._common import TRIPLETS, MinedLoss


def snr_distance(anchors: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Var(others − anchors) / Var(anchors), row-wise over the embedding dimensions."""
    return (others - anchors).var(dim=1) / anchors.var(dim=1)


class SnrLoss(MinedLoss):
    """SNR-distance triplet loss (Yuan et al. 2019)."""

    name = "snr"
    tuple_kinds = (TRIPLETS,)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        margin: Annotated[float, "margin m between SNR distances"] = 0.2,
        reg_lambda: Annotated[float, "λ of the zero-mean regulariser"] = 0.005,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.margin, self.reg_lambda = margin, reg_lambda

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # triplets (a, p, n): anchors index the queries, positives and negatives the references
        anchors, positives, negatives = tuples
        xa = queries[anchors]
        hinge = torch.relu(snr_distance(xa, ref[positives]) - snr_distance(xa, ref[negatives]) + self.margin)
        triplet = hinge.sum() / (hinge > 0).sum().clamp_min(1)
        return triplet + self.reg_lambda * queries.sum(dim=1).abs().mean()
