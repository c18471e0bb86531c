"""Triplet loss over mined triplets.

Schroff, Kalenichenko, Philbin. "FaceNet: A Unified Embedding for Face Recognition and
Clustering." CVPR 2015. https://arxiv.org/abs/1503.03832

    L = 1/|T| · Σ_{(a,p,n) ∈ T} [ ‖x_a − x_p‖² − ‖x_a − x_n‖² + m ]₊

with squared Euclidean distances as in the paper, m = ``--loss_triplet_margin`` (0.2) and T the
triplets returned by the batch miner. The mean runs over all mined triplets, active or not.

Deviations from the reference implementation: one vectorised gather instead of a Python loop over
triplets; an empty triplet set gives a differentiable 0 instead of a crash. ``cross_loss`` lets
the cross-batch memory (criteria/xbm.py) draw positives and negatives from stored embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from criteria._common import TRIPLETS, PairBasedLoss, keep_anchors, row_distances, zero_loss


@dataclass
class TripletHparams:
    margin: float = field(default=0.2, metadata={"help": "margin m between squared d(a,p) and d(a,n)"})


class TripletLoss(PairBasedLoss):
    """Triplet loss with squared Euclidean distances over mined triplets."""

    name = "triplet"
    Hparams = TripletHparams
    requires_miner = True
    tuple_kind = TRIPLETS
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), positives/negatives from ``ref``."""
        anchors, positives, negatives = keep_anchors(self.batchminer(ref, ref_labels), TRIPLETS, len(queries))
        if len(anchors) == 0:
            return zero_loss(queries)
        d_ap = row_distances(queries[anchors], ref[positives], squared=True)
        d_an = row_distances(queries[anchors], ref[negatives], squared=True)
        return torch.relu(d_ap - d_an + self.hp.margin).mean()
