"""Semi-hard negative mining.

Schroff, Kalenichenko, Philbin. "FaceNet: A Unified Embedding for Face Recognition and
Clustering." CVPR 2015, §3.2. https://arxiv.org/abs/1503.03832

For every anchor a with at least one other sample of its class and one sample of another class:
a positive p uniformly among the former, then a negative uniformly among the semi-hard ones,

    d(a, p)² < d(a, n)² < d(a, p)² + m,

i.e. farther than the positive but still inside the margin m = ``--miner_semihard_margin`` (0.2).
If no negative is semi-hard the negative is drawn uniformly among all negatives (as in the
reference study). The number of anchors that found a semi-hard negative is logged per epoch as
``miner_semihard_found``.

Deviations from the reference implementation: the margin is this miner's own flag (the reference
read whichever ``--loss_<loss>_margin`` existed and crashed for losses without one); distances are
*squared*, the same as the triplet loss's, so "semi-hard" means the same to miner and loss (the
reference used plain distances); anchors without a positive are skipped instead of crashing;
labels may live on the GPU; vectorised.
"""

from __future__ import annotations

from typing import Annotated

import torch

from batch_mining.base import BatchMiner, anchors_with_pos_and_neg, sample_uniform
from criteria._common import TRIPLETS, pairwise_distances


class SemihardMiner(BatchMiner):
    """One semi-hard triplet per anchor (FaceNet)."""

    name = "semihard"
    tuple_kind = TRIPLETS

    def __init__(
        self, *, seed: int, margin: Annotated[float, "semi-hard window m on squared distances"] = 0.2
    ) -> None:
        super().__init__(seed=seed)
        self.margin = margin

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        d2 = pairwise_distances(batch, squared=True)
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        positives = sample_uniform(pos[anchors], gen)
        d_ap = d2[anchors, positives][:, None]
        d_an = d2[anchors]
        neg_a = neg[anchors]
        semihard = neg_a & (d_an > d_ap) & (d_an < d_ap + self.margin)
        has_semihard = semihard.any(1, keepdim=True)
        negatives = sample_uniform(torch.where(has_semihard, semihard, neg_a), gen)
        self.count("semihard_found", has_semihard.sum())
        return anchors, positives, negatives
