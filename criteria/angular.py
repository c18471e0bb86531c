"""Angular loss, combined with the N-pair loss as in the paper's N-pair-angular objective.

Wang, Zhou, Wen, Liu, Lin. "Deep Metric Learning with Angular Loss." ICCV 2017.
https://arxiv.org/abs/1708.01682

For every anchor a with positive p and negative set N(a) (row a of the miner's ``neg_mask``), with
â, p̂, n̂ the L2-normalised embeddings and t = tan α:

    f_{a,n}  = 4t² (â + p̂)ᵀ n̂ − 2(1 + t²) âᵀ p̂
    L_ang    = mean_a log(1 + Σ_{n ∈ N(a)} exp f_{a,n})
    L_npair  = mean_a log(1 + Σ_{n ∈ N(a)} exp(x_aᵀx_n − x_aᵀx_p))        (raw embeddings)
    L        = L_npair + λ · L_ang + l2 · mean_i ‖x_i‖

α = ``--loss_angular_alpha`` (45 degrees), λ = ``--loss_angular_npair_ang_weight`` (2),
l2 = ``--loss_angular_npair_l2`` (0.005; the study's regulariser, the norm ‖x‖, over the whole batch).
With all other-class samples as negatives, L_ang equals pytorch-metric-learning's AngularLoss.

Deviations from the reference implementation: the negatives are a boolean mask, so anchors with
different numbers of negatives work (the reference crashed on ragged negative lists, i.e. on almost
every batch of its default sampler); log(1 + Σ e^z) uses logsumexp instead of an unclamped exp;
vectorised; no anchor gives a differentiable 0.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn
from torch.nn.functional import normalize

from ._common import NPAIR, MinedLoss, masked_logsumexp, npair_term


class AngularLoss(MinedLoss):
    """N-pair + angular loss (Wang et al. 2017)."""

    name = "angular"
    tuple_kinds = (NPAIR,)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        alpha: Annotated[float, "angle α in degrees"] = 45.0,
        npair_ang_weight: Annotated[float, "λ, weight of the angular term"] = 2.0,
        npair_l2: Annotated[float, "weight of the ‖x‖ regulariser"] = 0.005,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.alpha, self.npair_ang_weight, self.npair_l2 = alpha, npair_ang_weight, npair_l2

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # (anchors, positives, neg_mask): anchors index the queries, the rest the references
        anchors, positives, neg_mask = tuples
        npair = npair_term(queries, ref, anchors, positives, neg_mask)
        a, p = normalize(queries[anchors], dim=1), normalize(ref[positives], dim=1)
        t2 = math.tan(math.radians(self.alpha)) ** 2
        f = 4.0 * t2 * (a + p) @ normalize(ref, dim=1).T - 2.0 * (1.0 + t2) * (a * p).sum(1, keepdim=True)
        angular = masked_logsumexp(f, neg_mask, add_one=True).mean()
        return npair + self.npair_ang_weight * angular + self.npair_l2 * queries.norm(dim=1).mean()
