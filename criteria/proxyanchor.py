"""Proxy-Anchor loss.

Kim, Kim, Cho, Kwak. "Proxy Anchor Loss for Deep Metric Learning." CVPR 2020.
https://arxiv.org/abs/2003.13911

With proxies p_c (one per class), cosine similarities s(x, p) (both normalised inside), P⁺ the
proxies of classes present in the batch, X_p⁺ / X_p⁻ the batch samples of / not of p's class:

    L = 1/|P⁺| Σ_{p ∈ P⁺} log(1 + Σ_{x ∈ X_p⁺} e^{−α (s(x,p) − δ)})
      + 1/|P|  Σ_{p ∈ P}  log(1 + Σ_{x ∈ X_p⁻} e^{α (s(x,p) + δ)})

α = ``--loss_proxyanchor_alpha`` (32), δ = ``--loss_proxyanchor_margin`` (0.1), the paper's values.
The proxies are initialised with Kaiming-normal (fan-out) and learned with learning rate ``--lr`` ×
``--loss_proxyanchor_lrmulti`` (100, as in the paper), no weight decay. Equal to
pytorch-metric-learning's ProxyAnchorLoss. Not part of the study. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn
from torch.nn.functional import one_hot

from ._common import ClassWeightLoss, masked_logsumexp


class ProxyAnchorLoss(ClassWeightLoss):
    """Proxy-Anchor (Kim et al. 2020) with one learnable proxy per class."""

    name = "proxyanchor"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: float,
        alpha: Annotated[float, "scale α"] = 32.0,
        margin: Annotated[float, "margin δ"] = 0.1,
        lrmulti: Annotated[float, "proxy learning rate = --lr × lrmulti"] = 100.0,
    ) -> None:
        proxies = nn.init.kaiming_normal_(torch.empty(n_classes, embed_dim), mode="fan_out")
        super().__init__(
            n_classes=n_classes, embed_dim=embed_dim, lr=lr, table=proxies, param="proxies", group="proxies"
        )
        self.alpha, self.margin, self.lrmulti = alpha, margin, lrmulti

    def table_lr(self) -> float:
        """The network's learning rate × ``lrmulti``."""
        return self.lr * self.lrmulti

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        alpha, delta = self.alpha, self.margin
        positive = one_hot(labels, self.n_classes).to(torch.bool)
        pos_term = masked_logsumexp(-alpha * (cos - delta), positive, dim=0, add_one=True)
        neg_term = masked_logsumexp(alpha * (cos + delta), ~positive, dim=0, add_one=True)
        n_present = positive.any(0).sum()
        return pos_term.sum() / n_present + neg_term.sum() / self.n_classes
