"""Circle loss (pair-wise labels form).

Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. "Circle Loss: A Unified Perspective of Pair Similarity
Optimization." CVPR 2020. https://arxiv.org/abs/2002.10857

With cosine similarities s (embeddings L2-normalised inside), for each anchor with positive set P
and negative set N (all other samples of the batch), paper eq. 6:

    α_p = [1 + m − s_p]₊   α_n = [s_n + m]₊   (weights, no gradient)
    ℓ   = log(1 + Σ_N exp(γ α_n (s_n − m)) · Σ_P exp(−γ α_p (s_p − 1 + m)))
    L   = mean over anchors with at least one positive and one negative

m = ``--loss_circle_margin`` (0.4) and γ = ``--loss_circle_gamma`` (80), the paper's fine-grained
retrieval setting (face recognition: 0.25, 256). Equal to pytorch-metric-learning's CircleLoss.
Not part of the study. An anchor-free batch gives a differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import softplus

from ._common import PairBasedLoss, cosine_pairs, masked_logsumexp


class CircleLoss(PairBasedLoss):
    """Circle loss (Sun et al. 2020) over all pairs of the batch."""

    name = "circle"

    def __init__(
        self,
        *,
        margin: Annotated[float, "relaxation m"] = 0.4,
        gamma: Annotated[float, "scale γ"] = 80.0,
    ) -> None:
        super().__init__()
        self.margin, self.gamma = margin, gamma

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        m, gamma = self.margin, self.gamma
        sim, pos, neg = cosine_pairs(queries, q_labels, ref, ref_labels)
        alpha_p = torch.relu(1.0 + m - sim.detach())
        alpha_n = torch.relu(sim.detach() + m)
        lse_p = masked_logsumexp(-gamma * alpha_p * (sim - 1.0 + m), pos)
        lse_n = masked_logsumexp(gamma * alpha_n * (sim - m), neg)
        valid = pos.any(1) & neg.any(1)
        per_anchor = softplus(lse_p + lse_n) * valid
        return per_anchor.sum() / valid.sum().clamp_min(1)
