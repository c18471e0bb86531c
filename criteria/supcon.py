"""Supervised contrastive loss (SupCon), single view.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan. "Supervised Contrastive
Learning." NeurIPS 2020, eq. 2 (L^sup_out). https://arxiv.org/abs/2004.11362

With z the L2-normalised embeddings (normalised inside), τ = ``--loss_supcon_temperature`` (0.1),
P(i) the other samples of i's class and A(i) all samples but i:

    ℓ_i = −1/|P(i)| · Σ_{p ∈ P(i)} log( exp(z_iᵀz_p/τ) / Σ_{a ∈ A(i)} exp(z_iᵀz_a/τ) )
    L   = mean over anchors with |P(i)| > 0

The batch's samples act as the views (the sampler provides several images per class). Equal to
pytorch-metric-learning's SupConLoss. Not part of the study. No positive pair gives a
differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch

from ._common import PairBasedLoss, cosine_pairs, masked_logsumexp


class SupConLoss(PairBasedLoss):
    """Supervised contrastive loss (Khosla et al. 2020)."""

    name = "supcon"

    def __init__(self, *, temperature: Annotated[float, "temperature τ"] = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        sim, pos, neg = cosine_pairs(queries, q_labels, ref, ref_labels)
        logits = sim / self.temperature
        log_prob = logits - masked_logsumexp(logits, pos | neg)[:, None]
        n_pos = pos.sum(1)
        per_anchor = -(log_prob * pos).sum(1) / n_pos.clamp_min(1)
        valid = n_pos > 0
        return (per_anchor * valid).sum() / valid.sum().clamp_min(1)
