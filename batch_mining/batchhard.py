"""Batch-hard triplet mining.

Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification." 2017, §2.
https://arxiv.org/abs/1703.07737

For every anchor a with at least one other sample of its class and one of another class, the
hardest positive and the hardest negative of the batch:

    p(a) = argmax_{p ≠ a, y_p = y_a} d(a, p),     n(a) = argmin_{y_n ≠ y_a} d(a, n).

One triplet per anchor; ties go to the lowest index. Deterministic. (Not in the reference study.)
"""

from __future__ import annotations

import torch

from batch_mining.base import BatchMiner, anchors_with_pos_and_neg
from criteria._common import TRIPLETS, pairwise_distances


class BatchHardMiner(BatchMiner):
    """Hardest positive and hardest negative per anchor (Hermans et al. 2017)."""

    name = "batchhard"
    tuple_kind = TRIPLETS

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d2 = pairwise_distances(batch, squared=True)  # same argmax/argmin as plain distances
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        d = d2[anchors]
        positives = d.masked_fill(~pos[anchors], float("-inf")).argmax(1)
        negatives = d.masked_fill(~neg[anchors], float("inf")).argmin(1)
        return anchors, positives, negatives
