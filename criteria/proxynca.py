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

from typing import Annotated

import torch

from ._common import ClassWeightLoss, target_logit


class ProxyNCALoss(ClassWeightLoss):
    """ProxyNCA (Movshovitz-Attias et al. 2017) with one learnable proxy per class."""

    name = "proxynca"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: float,
        lrmulti: Annotated[float, "proxy learning rate = --lr × lrmulti"] = 50.0,
        scale: Annotated[float, "σ: embeddings and proxies are scaled to norm σ"] = 3.0,
    ) -> None:
        proxies = torch.randn(n_classes, embed_dim) / 8.0
        super().__init__(
            n_classes=n_classes, embed_dim=embed_dim, lr=lr, table=proxies, param="proxies", group="proxies"
        )
        self.lrmulti, self.scale = lrmulti, scale

    def table_lr(self) -> float:
        """The network's learning rate × ``lrmulti``."""
        return self.lr * self.lrmulti

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        dist = 2.0 * self.scale**2 * (1.0 - cos)
        d_pos = target_logit(dist, labels)
        if self.n_classes == 1:  # no negative proxy
            return d_pos.mean()
        negatives = (-dist).scatter(1, labels[:, None], float("-inf"))
        return (d_pos + torch.logsumexp(negatives, dim=1)).mean()
