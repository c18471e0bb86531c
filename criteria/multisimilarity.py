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
only and crashed when none survived (its issue #3); here that case is a differentiable 0. The
embeddings are normalised inside (the reference relied on the architecture; for normalised input
the value is unchanged).
pytorch-metric-learning's MultiSimilarityMiner + MultiSimilarityLoss keep the term of an anchor
whose other set is empty; the authors' code (followed here) skips such an anchor.
``cross_loss`` lets the cross-batch memory (criteria/xbm.py) supply extra positives/negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.functional import normalize

from criteria._common import PairBasedLoss, cross_label_masks


@dataclass
class MultiSimilarityHparams:
    pos_weight: float = field(default=2.0, metadata={"help": "α, scale of the positive term"})
    neg_weight: float = field(default=40.0, metadata={"help": "β, scale of the negative term"})
    margin: float = field(default=0.1, metadata={"help": "ε of the pair mining"})
    thresh: float = field(default=0.5, metadata={"help": "λ, similarity offset"})


def _log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + Σ_{mask} e^z), stable, 0 for empty rows."""
    z = z.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(len(z), 1, dtype=z.dtype, device=z.device)
    return torch.logsumexp(torch.cat([zeros, z], dim=1), dim=1)


class MultiSimilarityLoss(PairBasedLoss):
    """Multi-Similarity loss (Wang et al. 2019) with its own pair mining."""

    name = "multisimilarity"
    Hparams = MultiSimilarityHparams
    requires_miner = False
    tuple_kind = None
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors ``queries`` (= the first rows of ``ref``) against all of ``ref``."""
        hp = self.hp
        sim = normalize(queries, dim=1) @ normalize(ref, dim=1).T
        pos_mask, neg_mask = cross_label_masks(q_labels.to(sim.device), ref_labels.to(sim.device))
        with torch.no_grad():
            inf = torch.tensor(float("inf"), dtype=sim.dtype, device=sim.device)
            min_pos = torch.where(pos_mask, sim, inf).min(1, keepdim=True).values
            max_neg = torch.where(neg_mask, sim, -inf).max(1, keepdim=True).values
            neg_keep = neg_mask & (sim + hp.margin > min_pos)
            pos_keep = pos_mask & (sim - hp.margin < max_neg)
            valid = pos_keep.any(1) & neg_keep.any(1)
        pos_term = _log1p_sum_exp(-hp.pos_weight * (sim - hp.thresh), pos_keep) / hp.pos_weight
        neg_term = _log1p_sum_exp(hp.neg_weight * (sim - hp.thresh), neg_keep) / hp.neg_weight
        per_anchor = torch.where(valid, pos_term + neg_term, torch.zeros_like(pos_term))
        return per_anchor.sum() / len(queries)
