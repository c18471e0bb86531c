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

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import one_hot

from criteria._common import check_labels, cosine_logits, masked_logsumexp


@dataclass
class ProxyanchorHparams:
    alpha: float = field(default=32.0, metadata={"help": "scale α"})
    margin: float = field(default=0.1, metadata={"help": "margin δ"})
    lrmulti: float = field(default=100.0, metadata={"help": "proxy learning rate = --lr × lrmulti"})
    lr: float = field(default=1e-5, metadata={"global": "lr"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor (Kim et al. 2020) with one learnable proxy per class."""

    name = "proxyanchor"
    Hparams = ProxyanchorHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = ProxyanchorHparams(**hparams)
        proxies = torch.empty(self.hp.n_classes, self.hp.embed_dim)
        self.proxies = nn.Parameter(nn.init.kaiming_normal_(proxies, mode="fan_out"))

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.proxies],
                "lr": self.hp.lr * self.hp.lrmulti,
                "weight_decay": 0.0,
                "name": "proxyanchor_proxies",
            }
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        alpha, delta = self.hp.alpha, self.hp.margin
        cos = cosine_logits(batch, self.proxies)
        positive = one_hot(labels, self.hp.n_classes).to(torch.bool)
        pos_term = masked_logsumexp(-alpha * (cos - delta), positive, dim=0, add_one=True)
        neg_term = masked_logsumexp(alpha * (cos + delta), ~positive, dim=0, add_one=True)
        n_present = positive.any(0).sum()
        return pos_term.sum() / n_present + neg_term.sum() / self.hp.n_classes
