"""AdaFace: quality (feature-norm) adaptive margin.

Kim, Jain, Liu. "AdaFace: Quality Adaptive Margin for Face Recognition." CVPR 2022.
https://arxiv.org/abs/2204.00964

The embedding norm ‖x_i‖ is a proxy for image quality. With the batch statistics μ, σ of the
(clipped, detached) norms kept as moving averages, the normalised quality is

    ẑ_i = clip( h · (‖x_i‖ − μ) / (σ + ε), −1, 1 )

and the target logit gets an angular and an additive margin that depend on it
(g_angle = −m ẑ_i, g_add = m ẑ_i + m):

    logit_iy = s · ( cos(clip(θ_iy + g_angle, ε, π − ε)) − g_add )
    logit_ic = s · cos θ_ic (c ≠ y_i),      L = mean_i CE(logit_i, y_i)

with cos θ_ic = x̂_iᵀŵ_c clamped to [−1 + ε, 1 − ε], ε = 1e-3. Defaults are the paper's:
m = ``--loss_adaface_margin`` (0.4), h = ``--loss_adaface_h`` (0.333), s = ``--loss_adaface_scale``
(64), momentum ``--loss_adaface_momentum`` (0.01); μ and σ start at 20 and 100 and are buffers
(saved in checkpoints), updated before use and only in training mode, as in the authors' code.
The loss needs the *unnormalised* embedding (an ``--arch`` without ``_normalize``): with unit
norms ẑ is constant and AdaFace reduces to a fixed-margin loss. W ∈ ℝ^{C×D} is initialised
U(±1/√D), learned with ``--loss_adaface_lr`` (5e-4), no weight decay. Not part of the study and not
in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import ClassWeightLoss, replace_target, target_logit

_EPS = 1e-3


class AdaFaceLoss(ClassWeightLoss):
    """AdaFace (Kim et al. 2022) with learnable class weights."""

    name = "adaface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the AdaFace class weights"] = 5e-4,
        margin: Annotated[float, "margin m"] = 0.4,
        h: Annotated[float, "concentration h of the normalised norm"] = 0.333,
        scale: Annotated[float, "logit scale s"] = 64.0,
        momentum: Annotated[float, "momentum of the norm statistics"] = 0.01,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.margin, self.h, self.scale, self.momentum = margin, h, scale, momentum
        self.register_buffer("norm_mean", torch.tensor(20.0, dtype=torch.float64))
        self.register_buffer("norm_std", torch.tensor(100.0, dtype=torch.float64))

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) unnormalised embeddings; labels: (B,) class ids. Returns a scalar."""
        cos, labels = self.cosines(batch, labels)
        m = self.margin
        norms = batch.detach().norm(dim=1).clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                a = self.momentum
                self.norm_mean.mul_(1 - a).add_(a * norms.mean().to(self.norm_mean.dtype))
                if len(norms) > 1:
                    self.norm_std.mul_(1 - a).add_(a * norms.std().to(self.norm_std.dtype))
        mean, std = self.norm_mean.to(batch.dtype), self.norm_std.to(batch.dtype)
        z = ((norms - mean) / (std + _EPS) * self.h).clamp(-1.0, 1.0)
        cos = cos.clamp(-1.0 + _EPS, 1.0 - _EPS)
        theta_y = torch.arccos(target_logit(cos, labels))
        target = torch.cos((theta_y - m * z).clamp(_EPS, torch.pi - _EPS)) - (m + m * z)
        return cross_entropy(self.scale * replace_target(cos, labels, target), labels)
