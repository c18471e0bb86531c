"""SphereFace: angular softmax (A-Softmax) with a multiplicative angular margin.

Liu, Wen, Yu, Li, Raj, Song. "SphereFace: Deep Hypersphere Embedding for Face Recognition."
CVPR 2017. https://arxiv.org/abs/1704.08063

With normalised class weights ŵ_c, θ_ic the angle between x_i and ŵ_c, integer margin m and
k = ⌊m θ / π⌋ (so θ ∈ [kπ/m, (k+1)π/m]):

    ψ(θ)     = (−1)^k cos(m θ) − 2k                   (monotonically decreasing on [0, π])
    logit_ic = s ‖x_i‖ cos θ_ic                         (c ≠ y_i)
    logit_iy = s ‖x_i‖ (λ cos θ_iy + ψ(θ_iy)) / (1 + λ)
    L        = mean_i CE(logit_i, y_i)

m = ``--loss_sphereface_margin`` (4), s = ``--loss_sphereface_scale`` (1), λ =
``--loss_sphereface_anneal`` (0: the pure A-Softmax; the paper anneals λ from large to ~5 during
training, which a schedule can do by setting ``criterion.anneal``). The embedding is *not*
normalised (its norm scales the logits, as in the paper). W ∈ ℝ^{C×D} is initialised U(±1/√D),
learned with ``--loss_sphereface_lr`` (5e-4), no weight decay. With λ = 0 equal to
pytorch-metric-learning's SphereFaceLoss. Not part of the study. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import (
    ClassWeightLoss,
    clamp_cosine,
    replace_target,
    target_logit,
)


class SphereFaceLoss(ClassWeightLoss):
    """SphereFace / A-Softmax (Liu et al. 2017) with learnable class weights."""

    name = "sphereface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the SphereFace class weights"] = 5e-4,
        margin: Annotated[int, "integer angular multiplier m"] = 4,
        scale: Annotated[float, "extra logit scale s"] = 1.0,
        anneal: Annotated[float, "λ blending cos θ into the target logit"] = 0.0,
    ) -> None:
        if margin < 1:
            raise ValueError(f"sphereface margin must be an integer >= 1, got {margin}")
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.margin, self.scale, self.anneal = margin, scale, anneal

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings (not normalised); labels: (B,) class ids. Returns a scalar."""
        cos, labels = self.cosines(batch, labels)
        m = int(self.margin)
        theta = torch.arccos(clamp_cosine(target_logit(cos, labels)))
        k = torch.floor(m * theta.detach() / torch.pi)
        psi = (1.0 - 2.0 * torch.remainder(k, 2)) * torch.cos(m * theta) - 2.0 * k
        target = (self.anneal * torch.cos(theta) + psi) / (1.0 + self.anneal)
        logits = replace_target(cos, labels, target) * batch.norm(dim=1, keepdim=True) * self.scale
        return cross_entropy(logits, labels)
