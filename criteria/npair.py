"""N-pair loss over anchors, one positive each, and a mask of negatives.

Sohn. "Improved Deep Metric Learning with Multi-class N-pair Loss Objective." NeurIPS 2016.
https://papers.nips.cc/paper/6200-improved-deep-metric-learning-with-multi-class-n-pair-loss-objective

For every anchor a with positive p and negative set N(a) (row a of the miner's ``neg_mask``),
on the raw (unnormalised) embeddings:

    ℓ_a = log(1 + Σ_{n ∈ N(a)} exp(x_aᵀx_n − x_aᵀx_p))
    L   = mean_a ℓ_a + l2 · mean_i ‖x_i‖^q

with l2 = ``--loss_npair_l2`` (0.005; the help text of the study: 0.02 in the paper × 0.25 in the
authors' code) and q = 1 (the study's regulariser, the norm) or q = 2 with ``--loss_npair_l2_squared``
(Sohn's squared norm). The mean over i runs over the whole batch.

Which negatives an anchor sees is the miner's choice (its ``neg_mask``): the study's ``npair`` miner
gives every other-class sample; Sohn's original gives one sample per other class. With that
choice, l2 = 0 this equals pytorch-metric-learning's NPairsLoss.

Deviations from the reference implementation: vectorised over anchors with a mask instead of a
Python loop; log(1 + Σ e^z) is computed with logsumexp (no overflow, so neither the reference's
division of BN-Inception embeddings by 4 nor a clamp is needed); the regulariser's power is a flag;
no anchor gives a differentiable 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from criteria._common import NPAIR, PairBasedLoss, keep_anchors, masked_logsumexp, zero_loss


@dataclass
class NpairHparams:
    l2: float = field(default=0.005, metadata={"help": "weight of the embedding-norm regulariser"})
    l2_squared: bool = field(
        default=False, metadata={"help": "regularise ‖x‖² (Sohn) instead of ‖x‖ (study)"}
    )


class NpairLoss(PairBasedLoss):
    """N-pair loss (Sohn 2016) over (anchor, positive, negative-mask) tuples."""

    name = "npair"
    Hparams = NpairHparams
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
        xa = queries[anchors]
        z = xa @ ref.T - (xa * ref[positives]).sum(1, keepdim=True)
        loss = masked_logsumexp(z, neg_mask.to(z.device), add_one=True).mean()
        norms = queries.norm(dim=1)
        return loss + self.hp.l2 * (norms.pow(2) if self.hp.l2_squared else norms).mean()
