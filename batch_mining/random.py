"""Random triplet mining: B triplets drawn uniformly from all valid triplets of the batch.

A valid triplet (a, p, n) has y_a = y_p, a ≠ p and y_n ≠ y_a. Drawing the anchor with probability
∝ |P(a)|·|N(a)| and then p and n uniformly from its positives and negatives is exactly uniform over
all valid triplets.

Deviation from the reference implementation: the reference enumerated every triplet in Python
(12,320 for 56 classes × 2) and drew B of them without replacement; here the B triplets are drawn
with replacement by three ``torch.multinomial`` calls (same distribution per triplet, no
enumeration). Anchors without a positive or a negative are never drawn; a batch with no valid
triplet returns empty tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from batch_mining.base import BatchMiner, empty_triplets, label_masks, sample_rows


@dataclass
class RandomHparams:
    seed: int = field(default=0, metadata={"global": "seed"})


class RandomMiner(BatchMiner):
    """Uniformly random valid triplets."""

    name = "random"
    tuple_kind = "triplets"
    Hparams = RandomHparams

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)

    def mine(self, batch: torch.Tensor, labels: torch.Tensor):
        pos, neg = label_masks(labels)
        weight = pos.sum(1) * neg.sum(1)
        if weight.sum() == 0:
            return empty_triplets(batch.device)
        gen = self.generator(batch.device)
        anchors = torch.multinomial(weight.double(), len(labels), replacement=True, generator=gen)
        positives = sample_rows(pos[anchors].double(), gen)
        negatives = sample_rows(neg[anchors].double(), gen)
        return anchors, positives, negatives
