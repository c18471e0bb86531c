"""Lifted-structure mining: all positives and all negatives of every anchor, as masks.

Song, Xiang, Jegelka, Savarese. "Deep Metric Learning via Lifted Structured Feature Embedding."
CVPR 2016; generalised form by Hermans, Beyer, Leibe, 2017. https://arxiv.org/abs/1511.06452

Returns ``(anchors (A,), pos_mask (A, B) bool, neg_mask (A, B) bool)``: every sample with at least
one other sample of its class and one sample of another class is an anchor; ``pos_mask[i]`` marks
the other samples of its class, ``neg_mask[i]`` the samples of other classes. Deterministic.

Deviations from the reference implementation: masks instead of ragged per-anchor index lists
(vectorised losses need no Python loop); anchors without a negative are skipped.
"""

from __future__ import annotations

import torch

from batch_mining.base import BatchMiner, anchors_with_pos_and_neg
from criteria._common import LIFTED


class LiftedMiner(BatchMiner):
    """All positives and negatives per anchor, as boolean masks."""

    name = "lifted"
    tuple_kind = LIFTED

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        return anchors, pos[anchors], neg[anchors]
