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

from dataclasses import dataclass, field

import torch

from criteria._common import LIFTED, PairBasedLoss, cross_distances, keep_anchors, masked_logsumexp, zero_loss


@dataclass
class LiftedHparams:
    neg_margin: float = field(default=1.0, metadata={"help": "margin m of the negative term"})
    l2: float = field(default=0.005, metadata={"help": "weight of the ‖x‖ regulariser"})


class LiftedLoss(PairBasedLoss):
    """Generalised lifted structure loss over (anchor, positive-mask, negative-mask) tuples."""

    name = "lifted"
    Hparams = LiftedHparams
    requires_miner = True
    tuple_kind = LIFTED
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), positives/negatives from ``ref``."""
        anchors, pos_mask, neg_mask = keep_anchors(self.batchminer(ref, ref_labels), LIFTED, len(queries))
        pos_mask, neg_mask = pos_mask.to(queries.device), neg_mask.to(queries.device)
        valid = pos_mask.any(1) & neg_mask.any(1)
        if not bool(valid.any()):
            return zero_loss(queries)
        anchors, pos_mask, neg_mask = anchors[valid], pos_mask[valid], neg_mask[valid]
        d = cross_distances(queries[anchors], ref)
        per_anchor = masked_logsumexp(d, pos_mask) + masked_logsumexp(self.hp.neg_margin - d, neg_mask)
        return torch.relu(per_anchor).mean() + self.hp.l2 * queries.norm(dim=1).mean()
