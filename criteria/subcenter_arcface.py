"""Sub-center ArcFace.

Deng, Guo, Liu, Xue, Zafeiriou. "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy
Web Faces." ECCV 2020. https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf

Each class c has K sub-centres w_{c,1..K}; the class cosine is the closest one,
cos θ_ic = max_k x̂_iᵀŵ_{c,k}, and the loss is ArcFace on those cosines:

    logit_ic = s cos θ_ic (c ≠ y_i),   logit_iy = s cos(θ_iy + m)  (s (cos θ_iy − m sin m) past π),
    L = mean_i CE(logit_i, y_i)

K = ``--loss_subcenter_arcface_sub_centers`` (3), s = ``--loss_subcenter_arcface_scale`` (64),
m = ``--loss_subcenter_arcface_margin`` (0.5 rad), the paper's values. The (K·C) × D weights (row
k·C + c is sub-centre k of class c) are initialised U(±1/√D) and learned with
``--loss_subcenter_arcface_lr`` (5e-4), no weight decay. Equal to pytorch-metric-learning's
SubCenterArcFaceLoss (its weight column c·K + k is our row k·C + c). The paper's later step
of dropping non-dominant sub-centres and outliers is not included. Not part of the study. Memory O(B·C·K).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import (
    ClassWeightLoss,
    additive_angular_margin,
    init_class_weights,
    replace_target,
    target_logit,
)


class SubCenterArcFaceLoss(ClassWeightLoss):
    """Sub-center ArcFace (Deng et al. 2020) with K learnable sub-centres per class."""

    name = "subcenter_arcface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the sub-centre weights"] = 5e-4,
        margin: Annotated[float, "additive angular margin m (radians)"] = 0.5,
        scale: Annotated[float, "logit scale s"] = 64.0,
        sub_centers: Annotated[int, "sub-centres K per class"] = 3,
    ) -> None:
        table = init_class_weights(n_classes * sub_centers, embed_dim)
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr, table=table)
        self.margin, self.scale, self.sub_centers = margin, scale, sub_centers

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        # sub-centre-major layout (B, K, C): the max over K runs across contiguous C-long rows
        cos = cos.view(len(batch), self.sub_centers, self.n_classes).max(dim=1).values
        target = additive_angular_margin(target_logit(cos, labels), self.margin)
        return cross_entropy(self.scale * replace_target(cos, labels, target), labels)
