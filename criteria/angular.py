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
from dataclasses import dataclass, field

import torch
from torch.nn.functional import normalize

from criteria._common import NPAIR, PairBasedLoss, keep_anchors, masked_logsumexp, zero_loss


@dataclass
class AngularHparams:
    alpha: float = field(default=45.0, metadata={"help": "angle α in degrees"})
    npair_ang_weight: float = field(default=2.0, metadata={"help": "λ, weight of the angular term"})
    npair_l2: float = field(default=0.005, metadata={"help": "weight of the ‖x‖ regulariser"})


class AngularLoss(PairBasedLoss):
    """N-pair + angular loss (Wang et al. 2017)."""

    name = "angular"
    Hparams = AngularHparams
    requires_miner = True
    tuple_kind = NPAIR
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), positives/negatives from ``ref``."""
        anchors, positives, neg_mask = keep_anchors(self.batchminer(ref, ref_labels), NPAIR, len(queries))
        has_neg = neg_mask.any(1)  # an anchor without negatives has no term: not a 0 in the mean
        anchors, positives, neg_mask = (
            anchors[has_neg.to(anchors.device)],
            positives[has_neg.to(anchors.device)],
            neg_mask[has_neg],
        )
        if len(anchors) == 0:
            return zero_loss(queries)
        neg_mask = neg_mask.to(queries.device)
        xa, xp = queries[anchors], ref[positives]
        z = xa @ ref.T - (xa * xp).sum(1, keepdim=True)
        npair = masked_logsumexp(z, neg_mask, add_one=True).mean()

        a, p, r = normalize(xa, dim=1), normalize(xp, dim=1), normalize(ref, dim=1)
        t2 = math.tan(math.radians(self.hp.alpha)) ** 2
        f = 4.0 * t2 * (a + p) @ r.T - 2.0 * (1.0 + t2) * (a * p).sum(1, keepdim=True)
        angular = masked_logsumexp(f, neg_mask, add_one=True).mean()
        return npair + self.hp.npair_ang_weight * angular + self.hp.npair_l2 * queries.norm(dim=1).mean()
