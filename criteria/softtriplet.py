"""SoftTriple loss: softmax over classes with K learnable centres per class.

Qian, Shang, Sun, Hu, Li, Jin. "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling."
ICCV 2019. https://arxiv.org/abs/1909.05235 (authors' code: github.com/idstcv/SoftTriple)

With centres w_{c,k} (K per class, each L2-normalised) and x̂ the normalised embedding:

    S_{ic}  = Σ_k softmax_k( x̂_iᵀw_{c,k} / γ ) · x̂_iᵀw_{c,k}        (relaxed class similarity)
    L_cls   = mean_i CE( λ (S_i − δ e_{y_i}), y_i )
    R       = Σ_c Σ_{k < k'} sqrt(2 + 1e-5 − 2 w_{c,k}ᵀw_{c,k'}) / (C K (K − 1))
    L       = L_cls + τ R                                              (R only if K > 1)

K = ``--loss_softtriplet_n_centroids`` (2), δ = ``--loss_softtriplet_margin_delta`` (0.01), γ =
``--loss_softtriplet_gamma`` (0.1, entering as 1/γ), λ = ``--loss_softtriplet_lambda`` (8), τ =
``--loss_softtriplet_reg_weight`` (0.2). These are the study's flag defaults; the paper uses λ = 20,
K = 10. The centres (K·C × D, row k·C + c is centre k of class c) are initialised U(±1/√(C·K))
and learned with learning rate ``--lr`` × ``--loss_softtriplet_lrmulti`` (1), no weight decay.
L_cls equals pytorch-metric-learning's SoftTripleLoss (centers_per_class = K, la = λ; its centre
column c·K + k is our row k·C + c), which has no R by default.

Deviations from the reference implementation (all are fixes): it crashed on the
missing ``loss_softtriplet_lr`` attribute (``lrmulti`` is read now); centres are normalised per
centre, not per embedding dimension; the softmax runs over the K centres of a class, not over
classes; the multiplier is 1/γ, not γ. R is computed from the K(K−1)/2 centre pairs of each class
instead of from a (C·K)² matrix (2 GB for SOP). x is normalised inside. Memory O(B·C·K).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy, normalize

from ._common import ClassWeightLoss, replace_target, target_logit


class SoftTripleLoss(ClassWeightLoss):
    """SoftTriple (Qian et al. 2019) with K learnable centres per class.

    λ is the parameter ``la`` (``lambda`` is a Python keyword); its flag is ``--loss_softtriplet_lambda``.
    """

    name = "softtriplet"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: float,
        n_centroids: Annotated[int, "centres K per class"] = 2,
        margin_delta: Annotated[float, "margin δ"] = 0.01,
        gamma: Annotated[float, "γ: the centre softmax uses 1/γ"] = 0.1,
        la: Annotated[float, {"help": "logit scale λ", "flag": "loss_softtriplet_lambda"}] = 8.0,
        reg_weight: Annotated[float, "τ, weight of the centre regulariser"] = 0.2,
        lrmulti: Annotated[float, "centre learning rate = --lr × lrmulti"] = 1.0,
    ) -> None:
        n = n_classes * n_centroids
        bound = 1.0 / n**0.5
        centroids = torch.empty(n, embed_dim).uniform_(-bound, bound)
        super().__init__(
            n_classes=n_classes,
            embed_dim=embed_dim,
            lr=lr,
            table=centroids,
            param="centroids",
            group="centroids",
        )
        self.n_centroids, self.margin_delta, self.gamma = n_centroids, margin_delta, gamma
        self.la, self.reg_weight, self.lrmulti = la, reg_weight, lrmulti

    def table_lr(self) -> float:
        """The network's learning rate × ``lrmulti``."""
        return self.lr * self.lrmulti

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = self.checked_labels(batch, labels)
        C, K = self.n_classes, self.n_centroids
        centres = normalize(self.centroids.to(batch.dtype), dim=1)
        # centre-major layout (B, K, C): the softmax over K runs across C-long contiguous rows,
        # faster than a softmax over a trailing dimension of size K
        sim = (normalize(batch, dim=1) @ centres.T).view(len(batch), K, C)
        weights = torch.softmax(sim / self.gamma, dim=1)
        sim_class = (weights * sim).sum(1)
        target = target_logit(sim_class, labels) - self.margin_delta
        loss = cross_entropy(self.la * replace_target(sim_class, labels, target), labels)
        if self.reg_weight > 0 and K > 1:
            per_centre = centres.view(K, C, -1)
            first, second = torch.triu_indices(K, K, offset=1, device=batch.device)
            dots = (per_centre[first] * per_centre[second]).sum(-1)  # (K(K−1)/2, C)
            reg = torch.sqrt(2.0 + 1e-5 - 2.0 * dots).sum() / (C * K * (K - 1))
            loss = loss + self.reg_weight * reg
        return loss
