"""ProxyNCA: neighbourhood component analysis against one learnable proxy per class.

Movshovitz-Attias, Toshev, Leung, Ioffe, Singh. "No Fuss Distance Metric Learning using Proxies."
ICCV 2017. https://arxiv.org/abs/1703.07464

With proxies P ∈ ℝ^{C×D}, x̃ = σ x/‖x‖, p̃_c = σ p_c/‖p_c‖ and d_ic = ‖x̃_i − p̃_c‖² = 2σ²(1 − cos_ic):

    L = mean_i [ d_{i y_i} + log Σ_{c ≠ y_i} exp(−d_ic) ]

(the paper's eq. 4: the positive proxy is excluded from the denominator). σ =
``--loss_proxynca_scale`` (3, the study's fixed factor, which acts as a temperature). The proxies are
initialised N(0, 1)/8 and learned with learning rate ``--lr`` × ``--loss_proxynca_lrmulti`` (50), no
weight decay. With one class only (no negative proxy) the loss is d_{i y_i}.

pytorch-metric-learning's ProxyNCALoss includes the positive proxy in the denominator; with
softmax_scale = σ² its per-sample loss ℓ' relates to ours by ℓ = log(e^{ℓ'} − 1).

Deviations from the reference implementation: distances come from one (B, C) cosine matrix instead
of gathering a (B, C−1, D) tensor of negative proxies (0.65 GB per step for SOP's 11,318 classes);
no Python loop over the batch; the scale is a flag (default unchanged). Memory O(B·C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from criteria._common import check_labels, cosine_logits


@dataclass
class ProxyncaHparams:
    lrmulti: float = field(default=50.0, metadata={"help": "proxy learning rate = --lr × lrmulti"})
    scale: float = field(default=3.0, metadata={"help": "σ: embeddings and proxies are scaled to norm σ"})
    lr: float = field(default=1e-5, metadata={"global": "lr"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class ProxyNCALoss(nn.Module):
    """ProxyNCA (Movshovitz-Attias et al. 2017) with one learnable proxy per class."""

    name = "proxynca"
    Hparams = ProxyncaHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = ProxyncaHparams(**hparams)
        self.proxies = nn.Parameter(torch.randn(self.hp.n_classes, self.hp.embed_dim) / 8.0)

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.proxies],
                "lr": self.hp.lr * self.hp.lrmulti,
                "weight_decay": 0.0,
                "name": "proxynca_proxies",
            }
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        dist = 2.0 * self.hp.scale**2 * (1.0 - cosine_logits(batch, self.proxies))
        d_pos = dist.gather(1, labels[:, None]).squeeze(1)
        if self.hp.n_classes == 1:  # no negative proxy
            return d_pos.mean()
        negatives = (-dist).scatter(1, labels[:, None], float("-inf"))
        return (d_pos + torch.logsumexp(negatives, dim=1)).mean()
