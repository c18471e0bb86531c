"""CurricularFace: adaptive curriculum learning loss.

Huang, Wang, Tai, Liu, Shen, Li, Li, Huang. "CurricularFace: Adaptive Curriculum Learning Loss for
Deep Face Recognition." CVPR 2020. https://arxiv.org/abs/2004.00288

With cos θ_ic = x̂_iᵀŵ_c (normalised inside), the target logit is ArcFace's,
φ_i = cos(θ_iy + m) (cos θ_iy − m sin m past θ + m > π), and a negative c is "hard" when
cos θ_ic > cos(θ_iy + m). Hard negatives are re-weighted by the curriculum parameter t:

    logit_ic = s · cos θ_ic                      easy negative
             = s · cos θ_ic (t + cos θ_ic)        hard negative
    logit_iy = s · φ_i
    t ← α · mean_i cos θ_iy + (1 − α) t           (before each training step, no gradient)

s = ``--loss_curricularface_scale`` (64), m = ``--loss_curricularface_margin`` (0.5), α =
``--loss_curricularface_momentum`` (0.01), t starts at 0, the paper's values. t is a buffer (saved in
checkpoints), updated only in training mode, before it is used, as in the authors' code.
W ∈ ℝ^{C×D} is initialised U(±1/√D), learned with ``--loss_curricularface_lr`` (5e-4), no weight
decay. Not part of the study and not in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import (
    ClassWeightLoss,
    additive_angular_margin,
    clamp_cosine,
    replace_target,
    target_logit,
)


class CurricularFaceLoss(ClassWeightLoss):
    """CurricularFace (Huang et al. 2020) with learnable class weights."""

    name = "curricularface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the CurricularFace class weights"] = 5e-4,
        margin: Annotated[float, "additive angular margin m (radians)"] = 0.5,
        scale: Annotated[float, "logit scale s"] = 64.0,
        momentum: Annotated[float, "α of the moving average t"] = 0.01,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.margin, self.scale, self.momentum = margin, scale, momentum
        self.register_buffer("t", torch.zeros((), dtype=torch.float64))

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        m = self.margin
        cos_y = target_logit(cos, labels)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(self.momentum * cos_y.mean().to(self.t.dtype))
        with torch.no_grad():
            hard = cos > torch.cos(torch.arccos(clamp_cosine(cos_y)) + m)[:, None]
        t = self.t.to(cos.dtype)
        logits = torch.where(hard, cos * (t + cos), cos)
        logits = replace_target(logits, labels, additive_angular_margin(cos_y, m))
        return cross_entropy(self.scale * logits, labels)
