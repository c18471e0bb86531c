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

from typing import Annotated

import torch
from torch import nn

from ._common import NPAIR, MinedLoss, npair_term


class NpairLoss(MinedLoss):
    """N-pair loss (Sohn 2016) over (anchor, positive, negative-mask) tuples."""

    name = "npair"
    tuple_kinds = (NPAIR,)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        l2: Annotated[float, "weight of the embedding-norm regulariser"] = 0.005,
        l2_squared: Annotated[bool, "regularise ‖x‖² (Sohn) instead of ‖x‖ (study)"] = False,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.l2, self.l2_squared = l2, l2_squared

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # (anchors, positives, neg_mask): anchors index the queries, the rest the references
        loss = npair_term(queries, ref, *tuples)
        norms = queries.norm(dim=1)
        return loss + self.l2 * (norms.pow(2) if self.l2_squared else norms).mean()
