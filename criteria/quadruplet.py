"""Quadruplet loss.

Chen, Chen, Zhang, Huang. "Beyond Triplet Loss: A Deep Quadruplet Network for Person
Re-identification." CVPR 2017. https://arxiv.org/abs/1704.01719

For every mined triplet (a, p, n) and every fourth sample q whose class differs from both y_a and
y_n (the paper's "third class"), with Euclidean distances d:

    L = mean_T [d(a,p) − d(a,n) + α₁]₊  +  mean_{T'} mean_{q ∈ Q(t)} [d(a,p) − d(n,q) + α₂]₊

α₁ = ``--loss_quadruplet_margin_alpha_1`` (0.2), α₂ = ``--loss_quadruplet_margin_alpha_2`` (0.2);
T' are the triplets with at least one valid q (a batch of two classes has none, and then the second
term is 0). Non-squared distances, as in the study.

Deviations from the reference implementation: the reference drew one q per triplet from batch
*positions* with a different mined negative index, which allowed q from the anchor's or the
negative's class (the paper forbids both) and crashed unless the miner returned exactly B triplets.
Here q ranges over every sample of a third class and the term is averaged over them, the expected
value of drawing q uniformly, without the sampling noise (and with no random state in the loss).
Any number of triplets works; vectorised (T × B); nothing mined gives a differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from ._common import TRIPLETS, MinedLoss, cross_distances, other_label_mask, row_distances


class QuadrupletLoss(MinedLoss):
    """Quadruplet loss (Chen et al. 2017) on mined triplets plus every third-class sample."""

    name = "quadruplet"
    tuple_kinds = (TRIPLETS,)

    def __init__(
        self,
        *,
        batchminer: nn.Module,
        margin_alpha_1: Annotated[float, "α₁, margin of the triplet term"] = 0.2,
        margin_alpha_2: Annotated[float, "α₂, margin of the negative-pair term"] = 0.2,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.margin_alpha_1, self.margin_alpha_2 = margin_alpha_1, margin_alpha_2

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # triplets (a, p, n): anchors index the queries; positives, negatives and q the references
        anchors, positives, negatives = tuples
        ref_labels = ref_labels.to(queries.device)
        d_ap = row_distances(queries[anchors], ref[positives])
        d_an = row_distances(queries[anchors], ref[negatives])
        triplet = torch.relu(d_ap - d_an + self.margin_alpha_1).mean()

        # q: a class other than the anchor's and the negative's
        third = other_label_mask(ref_labels[anchors], ref_labels) & other_label_mask(
            ref_labels[negatives], ref_labels
        )
        d_nq = cross_distances(ref[negatives], ref)
        hinge = torch.relu(d_ap[:, None] - d_nq + self.margin_alpha_2) * third
        n_q = third.sum(1)
        has_q = n_q > 0
        per_triplet = hinge.sum(1) / n_q.clamp_min(1)
        quad = (per_triplet * has_q).sum() / has_q.sum().clamp_min(1)
        return triplet + quad
