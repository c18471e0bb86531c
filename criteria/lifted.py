"""Generalised lifted structure loss.

Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification." 2017, eq. 4
(generalising Oh Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
CVPR 2016). https://arxiv.org/abs/1703.07737

For every anchor a with positive set P(a) and negative set N(a) (rows of the miner's masks), with
Euclidean distances d:

    ℓ_a = [ log Σ_{p ∈ P(a)} e^{d(a,p)} + log Σ_{n ∈ N(a)} e^{m − d(a,n)} ]₊
    L   = mean_a ℓ_a + l2 · mean_i ‖x_i‖

m = ``--loss_lifted_neg_margin`` (1), l2 = ``--loss_lifted_l2`` (0.005; the study's ‖x‖ regulariser,
over the whole batch). Anchors whose positive or negative set is empty are skipped. With all
positives and negatives this equals pytorch-metric-learning's GeneralizedLiftedStructureLoss
(pos_margin 0) plus the regulariser.

Deviations from the reference implementation: the reference took norms over the wrong axis (the
log-sum-exp ran over embedding dimensions, not samples), so it did not compute this loss at all;
here the log-sum-exps run over samples of one distance matrix; vectorised; no valid anchor gives a
differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from ._common import LIFTED, MinedLoss, cross_distances, masked_logsumexp


class LiftedLoss(MinedLoss):
    """Generalised lifted structure loss over (anchor, positive-mask, negative-mask) tuples."""

    name = "lifted"
    tuple_kinds = (LIFTED,)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        neg_margin: Annotated[float, "margin m of the negative term"] = 1.0,
        l2: Annotated[float, "weight of the ‖x‖ regulariser"] = 0.005,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.neg_margin, self.l2 = neg_margin, l2

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # (anchors, pos_mask, neg_mask): anchors index the queries, mask columns the references
        anchors, pos_mask, neg_mask = tuples
        d = cross_distances(queries[anchors], ref)
        per_anchor = masked_logsumexp(d, pos_mask) + masked_logsumexp(self.neg_margin - d, neg_mask)
        return torch.relu(per_anchor).mean() + self.l2 * queries.norm(dim=1).mean()
