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

from dataclasses import dataclass, field

import torch
from torch.nn.functional import normalize

from criteria._common import PairBasedLoss, cross_label_masks, masked_logsumexp


@dataclass
class SupconHparams:
    temperature: float = field(default=0.1, metadata={"help": "temperature τ"})


class SupConLoss(PairBasedLoss):
    """Supervised contrastive loss (Khosla et al. 2020)."""

    name = "supcon"
    Hparams = SupconHparams
    requires_miner = False
    tuple_kind = None
    supports_xbm = True

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors ``queries`` (= the first rows of ``ref``) against all of ``ref``."""
        logits = normalize(queries, dim=1) @ normalize(ref, dim=1).T / self.hp.temperature
        pos, neg = cross_label_masks(q_labels.to(logits.device), ref_labels.to(logits.device))
        log_prob = logits - masked_logsumexp(logits, pos | neg)[:, None]
        n_pos = pos.sum(1)
        per_anchor = -(log_prob * pos).sum(1) / n_pos.clamp_min(1)
        valid = n_pos > 0
        return (per_anchor * valid).sum() / valid.sum().clamp_min(1)
