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

from typing import Annotated

import torch
from torch import nn

from ._common import TRIPLETS, MinedLoss, row_distances


class TripletLoss(MinedLoss):
    """Triplet loss with squared Euclidean distances over mined triplets."""

    name = "triplet"
    tuple_kinds = (TRIPLETS,)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        margin: Annotated[float, "margin m between squared d(a,p) and d(a,n)"] = 0.2,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.margin = margin

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # triplets (a, p, n): anchors index the queries, positives and negatives the references
        anchors, positives, negatives = tuples
        d_ap = row_distances(queries[anchors], ref[positives], squared=True)
        d_an = row_distances(queries[anchors], ref[negatives], squared=True)
        return torch.relu(d_ap - d_an + self.margin).mean()
