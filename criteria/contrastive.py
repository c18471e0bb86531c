"""Contrastive loss on mined positive and negative pairs (from triplets or from pair miners).

Hadsell, Chopra, LeCun. "Dimensionality Reduction by Learning an Invariant Mapping." CVPR 2006.
http://yann.lecun.com/exdb/publis/pdf/hadsell-chopra-lecun-06.pdf

The loss accepts two tuple kinds. A *triplet* miner's (a, p, n) contributes the positive pair
(a, p) and the negative pair (a, n):

    L = mean_T [d(a, p) − m⁺]₊^q + mean_T [m⁻ − d(a, n)]₊^q

A *pair* miner (e.g. ``multisimilarity``) returns positive pairs P = (a1, p) and negative pairs
N = (a2, n) of independent lengths:

    L = mean_P [d(a1, p) − m⁺]₊^q + mean_N [m⁻ − d(a2, n)]₊^q

where an empty P or N contributes 0. Euclidean d, m⁺ = ``--loss_contrastive_pos_margin`` (0),
m⁻ = ``--loss_contrastive_neg_margin`` (1) and q = ``--loss_contrastive_power``. q = 1 (the flag's
default) is the linear hinge the study trained with (and pytorch-metric-learning's default);
q = 2 is Hadsell et al.'s squared form (their ½ factor is a constant scale and omitted). Positive
and negative terms are averaged separately, as in pytorch-metric-learning's ContrastiveLoss with
a MeanReducer. With a cross-batch memory the pairs are kept whose anchor (a1, resp. a2) is in the
batch.

Deviations from the reference implementation: pair miners are accepted; the exponent is
configurable; no eps is added inside the norm; nothing mined gives a differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from ._common import PAIRS, TRIPLETS, MinedLoss, row_distances


def _mean_or_zero(terms: torch.Tensor) -> torch.Tensor:
    """The mean of ``terms``, or a differentiable 0 for an empty set."""
    return terms.mean() if len(terms) else terms.sum()


class ContrastiveLoss(MinedLoss):
    """Contrastive loss over the positive and negative pairs of mined triplets or pairs."""

    name = "contrastive"
    tuple_kinds = (TRIPLETS, PAIRS)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        pos_margin: Annotated[float, "positive pairs are pulled below m⁺"] = 0.0,
        neg_margin: Annotated[float, "negative pairs are pushed beyond m⁻"] = 1.0,
        power: Annotated[float, "exponent q of the hinges (2: Hadsell et al.)"] = 1.0,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.pos_margin, self.neg_margin, self.power = pos_margin, neg_margin, power

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # triplets (a, p, n) or pairs (a1, p, a2, n): anchors index the queries, partners the references
        if len(tuples) == 3:  # triplets: both pairs share the anchor
            a1, positives, negatives = tuples
            a2 = a1
        else:
            a1, positives, a2, negatives = tuples
        d_ap = row_distances(queries[a1], ref[positives])
        d_an = row_distances(queries[a2], ref[negatives])
        pos = torch.relu(d_ap - self.pos_margin).pow(self.power)
        neg = torch.relu(self.neg_margin - d_an).pow(self.power)
        return _mean_or_zero(pos) + _mean_or_zero(neg)
