"""Multi-Similarity loss with its built-in pair mining.

Wang, Han, Huang, Dong, Scott. "Multi-Similarity Loss with General Pair Weighting for Deep Metric
Learning." CVPR 2019. https://arxiv.org/abs/1904.06627

With cosine similarities S = x̂ x̂ᵀ (x̂ = x/‖x‖, normalised inside), for each anchor i with
positives P_i (same label, j ≠ i) and negatives N_i, pairs are first mined (paper eq. 9-10):

    keep n ∈ N_i  if  S_in + ε > min_{p ∈ P_i} S_ip
    keep p ∈ P_i  if  S_ip − ε < max_{n ∈ N_i} S_in

and then, over the kept sets P̃_i and Ñ_i (paper eq. 13),

    L = 1/B · Σ_i [ 1/α · log(1 + Σ_{P̃_i} e^{−α (S_ip − λ)}) + 1/β · log(1 + Σ_{Ñ_i} e^{β (S_in − λ)}) ]

α = ``--loss_multisimilarity_pos_weight`` (2), β = ``--loss_multisimilarity_neg_weight`` (40; the
paper uses 50), ε = ``--loss_multisimilarity_margin`` (0.1), λ = ``--loss_multisimilarity_thresh``
(0.5; the paper uses 1). An anchor whose kept positive or negative set is empty contributes 0, and
the sum is divided by the batch size B, as in the authors' code.

Deviations from the reference implementation: vectorised with masks and ``logsumexp`` (log(1 + Σ e^z)
computed stably) instead of a loop over anchors; the reference averaged over the surviving anchors
only and crashed when none survived (issue #3 of the reference repository); here that case is a differentiable 0. The
embeddings are normalised inside (the reference relied on the architecture; for normalised input
the value is unchanged).
pytorch-metric-learning's MultiSimilarityMiner + MultiSimilarityLoss keep the term of an anchor
whose other set is empty; the authors' code (followed here) skips such an anchor.
``cross_loss`` lets the cross-batch memory (criteria/xbm.py) supply extra positives/negatives.
"""

from __future__ import annotations

from typing import Annotated

import torch

from ._common import PairBasedLoss, cosine_pairs, masked_logsumexp


class MultiSimilarityLoss(PairBasedLoss):
    """Multi-Similarity loss (Wang et al. 2019) with its own pair mining."""

    name = "multisimilarity"

    def __init__(
        self,
        *,
        pos_weight: Annotated[float, "α, scale of the positive term"] = 2.0,
        neg_weight: Annotated[float, "β, scale of the negative term"] = 40.0,
        margin: Annotated[float, "ε of the pair mining"] = 0.1,
        thresh: Annotated[float, "λ, similarity offset"] = 0.5,
    ) -> None:
        super().__init__()
        self.pos_weight, self.neg_weight, self.margin, self.thresh = pos_weight, neg_weight, margin, thresh

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        sim, pos_mask, neg_mask = cosine_pairs(queries, q_labels, ref, ref_labels)
        with torch.no_grad():
            inf = torch.tensor(float("inf"), dtype=sim.dtype, device=sim.device)
            min_pos = torch.where(pos_mask, sim, inf).min(1, keepdim=True).values
            max_neg = torch.where(neg_mask, sim, -inf).max(1, keepdim=True).values
            neg_keep = neg_mask & (sim + self.margin > min_pos)
            pos_keep = pos_mask & (sim - self.margin < max_neg)
            valid = pos_keep.any(1) & neg_keep.any(1)
        pos_z, neg_z = -self.pos_weight * (sim - self.thresh), self.neg_weight * (sim - self.thresh)
        pos_term = masked_logsumexp(pos_z, pos_keep, add_one=True) / self.pos_weight
        neg_term = masked_logsumexp(neg_z, neg_keep, add_one=True) / self.neg_weight
        per_anchor = torch.where(valid, pos_term + neg_term, torch.zeros_like(pos_term))
        return per_anchor.sum() / len(queries)
