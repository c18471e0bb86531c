"""Contrastive loss on the positive and negative pairs of mined triplets.

Hadsell, Chopra, LeCun. "Dimensionality Reduction by Learning an Invariant Mapping." CVPR 2006.
http://yann.lecun.com/exdb/publis/pdf/hadsell-chopra-lecun-06.pdf

Each mined triplet (a, p, n) contributes the positive pair (a, p) and the negative pair (a, n):

    L = mean_T [d(a, p) − m⁺]₊^q + mean_T [m⁻ − d(a, n)]₊^q

with Euclidean d, m⁺ = ``--loss_contrastive_pos_margin`` (0), m⁻ = ``--loss_contrastive_neg_margin``
(1) and q = ``--loss_contrastive_power``. q = 1 (default) is the linear hinge the study trained
with (and pytorch-metric-learning's default); q = 2 is Hadsell et al.'s squared form (their ½
factor is a constant scale and omitted). Positive and negative terms are averaged separately.

Deviations from the reference implementation: the exponent is configurable; no eps is added inside
the norm; an empty triplet set gives a differentiable 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from criteria._common import TRIPLETS, PairBasedLoss, keep_anchors, row_distances, zero_loss


@dataclass
class ContrastiveHparams:
    pos_margin: float = field(default=0.0, metadata={"help": "positive pairs are pulled below m⁺"})
    neg_margin: float = field(default=1.0, metadata={"help": "negative pairs are pushed beyond m⁻"})
    power: float = field(default=1.0, metadata={"help": "exponent q of the hinges (2: Hadsell et al.)"})


class ContrastiveLoss(PairBasedLoss):
    """Contrastive loss over the (a, p) and (a, n) pairs of mined triplets."""

    name = "contrastive"
    Hparams = ContrastiveHparams
    requires_miner = True
    tuple_kind = TRIPLETS
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), partners from ``ref``."""
        anchors, positives, negatives = keep_anchors(self.batchminer(ref, ref_labels), TRIPLETS, len(queries))
        if len(anchors) == 0:
            return zero_loss(queries)
        d_ap = row_distances(queries[anchors], ref[positives])
        d_an = row_distances(queries[anchors], ref[negatives])
        pos = torch.relu(d_ap - self.hp.pos_margin).pow(self.hp.power)
        neg = torch.relu(self.hp.neg_margin - d_an).pow(self.hp.power)
        return pos.mean() + neg.mean()
