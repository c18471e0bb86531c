"""Batch-hard triplet mining.

Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification." 2017, §2.
https://arxiv.org/abs/1703.07737

For every anchor a with at least one other sample of its class and one of another class, the
hardest positive and the hardest negative of the batch:

    p(a) = argmax_{p ≠ a, y_p = y_a} d(a, p),     n(a) = argmin_{y_n ≠ y_a} d(a, n).

One triplet per anchor; ties go to the lowest index. Deterministic. (Not in the reference study.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from batch_mining.base import BatchMiner, label_masks, pairwise_distances


@dataclass
class BatchHardHparams:
    seed: int = field(default=0, metadata={"global": "seed"})


class BatchHardMiner(BatchMiner):
    """Hardest positive and hardest negative per anchor (Hermans et al. 2017)."""

    name = "batchhard"
    tuple_kind = "triplets"
    Hparams = BatchHardHparams

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d2 = pairwise_distances(batch, squared=True)  # same argmax/argmin as plain distances
        pos, neg = label_masks(labels)
        anchors = torch.nonzero(pos.any(1) & neg.any(1)).squeeze(1)
        d = d2[anchors]
        positives = d.masked_fill(~pos[anchors], float("-inf")).argmax(1)
        negatives = d.masked_fill(~neg[anchors], float("inf")).argmin(1)
        return anchors, positives, negatives
