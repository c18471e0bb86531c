"""CosFace: large margin cosine loss (LMCL).

Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu. "CosFace: Large Margin Cosine Loss for Deep Face
Recognition." CVPR 2018. https://arxiv.org/abs/1801.09414

With cos θ_ic = x̂_iᵀŵ_c (both L2-normalised inside):

    logit_ic = s · (cos θ_ic − m · [c = y_i]),    L = mean_i CE(logit_i, y_i)

s = ``--loss_cosface_scale`` (64), m = ``--loss_cosface_margin`` (0.35), the paper's values. W ∈ ℝ^{C×D}
is initialised U(±1/√D), learned with ``--loss_cosface_lr`` (5e-4, like ArcFace in the study), no
weight decay. Equal to pytorch-metric-learning's CosFaceLoss. Not part of the study. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import ClassWeightLoss, replace_target, target_logit


class CosFaceLoss(ClassWeightLoss):
    """CosFace (Wang et al. 2018) with learnable class weights."""

    name = "cosface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the CosFace class weights"] = 5e-4,
        margin: Annotated[float, "additive cosine margin m"] = 0.35,
        scale: Annotated[float, "logit scale s"] = 64.0,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.margin, self.scale = margin, scale

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        target = target_logit(cos, labels) - self.margin
        return cross_entropy(self.scale * replace_target(cos, labels, target), labels)
