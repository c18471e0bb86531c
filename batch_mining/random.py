"""Random triplet mining: B triplets drawn uniformly from all valid triplets of the batch.

A valid triplet (a, p, n) has y_a = y_p, a ≠ p and y_n ≠ y_a. Drawing the anchor with probability
∝ |P(a)|·|N(a)| and then p and n uniformly from its positives and negatives is exactly uniform over
all valid triplets.

Deviations from the reference implementation: the reference enumerated every triplet in Python
(12,320 for 56 classes × 2) and drew B of them without replacement (crashing when there were fewer
than B); here B triplets are drawn with replacement by one ``torch.multinomial`` and two masked
uniform draws (the same distribution per triplet, no enumeration). A batch without any valid
triplet returns empty tensors.
"""

from __future__ import annotations

import torch

from batch_mining.base import BatchMiner, empty_triplets, sample_uniform
from criteria._common import TRIPLETS, same_label_masks


class RandomMiner(BatchMiner):
    """B uniformly random valid triplets."""

    name = "random"
    tuple_kind = TRIPLETS

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pos, neg = same_label_masks(labels)
        weight = (pos.sum(1) * neg.sum(1)).double()
        if not bool(weight.any()):
            return empty_triplets(batch.device)
        gen = self.generator(batch.device)
        anchors = torch.multinomial(weight, len(labels), replacement=True, generator=gen)
        positives = sample_uniform(pos[anchors], gen)
        negatives = sample_uniform(neg[anchors], gen)
        return anchors, positives, negatives
