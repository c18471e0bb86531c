"""Semi-hard negative mining.

Schroff, Kalenichenko, Philbin. "FaceNet: A Unified Embedding for Face Recognition and
Clustering." CVPR 2015, §3.2. https://arxiv.org/abs/1503.03832

For every anchor a with at least one other sample of its class: a positive p uniformly among
them, then a negative uniformly among the semi-hard ones,

    d(a, p)² < d(a, n)² < d(a, p)² + m,

i.e. farther than the positive but still inside the margin. If no negative is semi-hard the
negative is drawn uniformly among all negatives (as in the reference study).

Deviations from the reference implementation: the margin m is this miner's own flag
``--miner_semihard_margin`` (default 0.2, the triplet margin), not read from whichever
``--loss_<loss>_margin`` exists (which crashed for losses without one); distances are *squared*, the
same as the triplet loss's, so "semi-hard" means the same thing to miner and loss; anchors without
a positive are skipped instead of crashing; labels may live on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from batch_mining.base import BatchMiner, label_masks, pairwise_distances, sample_rows


@dataclass
class SemihardHparams:
    margin: float = field(default=0.2, metadata={"help": "semi-hard window m on squared distances"})
    seed: int = field(default=0, metadata={"global": "seed"})


class SemihardMiner(BatchMiner):
    """One semi-hard triplet per anchor (FaceNet)."""

    name = "semihard"
    tuple_kind = "triplets"
    Hparams = SemihardHparams

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)

    def mine(self, batch: torch.Tensor, labels: torch.Tensor):
        gen = self.generator(batch.device)
        d2 = pairwise_distances(batch).pow(2)
        pos, neg = label_masks(labels)
        anchors = torch.nonzero(pos.any(1) & neg.any(1)).squeeze(1)
        positives = sample_rows(pos[anchors].double(), gen)
        d_ap = d2[anchors, positives][:, None]
        d_an = d2[anchors]
        semihard = neg[anchors] & (d_an > d_ap) & (d_an < d_ap + self.hp.margin)
        has_semihard = semihard.any(1, keepdim=True)
        candidates = torch.where(has_semihard, semihard, neg[anchors])
        negatives = sample_rows(candidates.double(), gen)
        self.count("semihard_found", has_semihard.sum().item())
        return anchors, positives, negatives
