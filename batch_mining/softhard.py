"""Soft-hard ("random hard") triplet mining, as in the reference study.

For every anchor a with at least one other sample of its class and one of another class:

* hard negatives: N_h(a) = { n : y_n ≠ y_a, d(a, n) < max_{p ∈ P(a)} d(a, p) },
* hard positives: P_h(a) = { p : y_p = y_a, p ≠ a, d(a, p) > min_{n ∈ N(a)} d(a, n) },

the positive is drawn uniformly from P_h(a) and the negative uniformly from N_h(a); when either set
is empty, uniformly from all positives / all negatives instead. One triplet per anchor. (This is
"random among the violating tuples", not hardest-only mining; for that see ``batchhard``.)

Deviations from the reference implementation: vectorised with masks on the batch's device; the
reference's behaviour is otherwise kept.
"""

from __future__ import annotations

import torch

from batch_mining.base import BatchMiner, anchors_with_pos_and_neg, sample_uniform
from criteria._common import TRIPLETS, pairwise_distances


class SofthardMiner(BatchMiner):
    """A random hard positive and a random hard negative per anchor."""

    name = "softhard"
    tuple_kind = TRIPLETS

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        dist = pairwise_distances(batch)
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        d, pos_a, neg_a = dist[anchors], pos[anchors], neg[anchors]
        hardest_pos = d.masked_fill(~pos_a, float("-inf")).amax(1, keepdim=True)
        closest_neg = d.masked_fill(~neg_a, float("inf")).amin(1, keepdim=True)
        hard_neg = neg_a & (d < hardest_pos)
        hard_pos = pos_a & (d > closest_neg)
        positives = sample_uniform(torch.where(hard_pos.any(1, keepdim=True), hard_pos, pos_a), gen)
        negatives = sample_uniform(torch.where(hard_neg.any(1, keepdim=True), hard_neg, neg_a), gen)
        return anchors, positives, negatives
