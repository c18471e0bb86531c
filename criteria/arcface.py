"""ArcFace: additive angular margin loss.

Deng, Guo, Xue, Zafeiriou. "ArcFace: Additive Angular Margin Loss for Deep Face Recognition."
CVPR 2019. https://arxiv.org/abs/1801.07698

With class weights W ∈ ℝ^{C×D}, cos θ_ic = x̂_iᵀŵ_c (both L2-normalised inside), scale s and margin m:

    logit_ic = s · cos θ_ic                     (c ≠ y_i)
    logit_iy = s · cos(θ_iy + m)                 if θ_iy + m ≤ π
             = s · (cos θ_iy − m · sin m)         otherwise (keeps the logit decreasing in θ)
    L = mean_i CE(logit_i, y_i)

s = ``--loss_arcface_feature_scale`` (16), m = ``--loss_arcface_angular_margin`` (0.5 rad); W is
initialised U(±1/√D) and trained with ``--loss_arcface_lr`` (5e-4), no weight decay. Equal to
pytorch-metric-learning's ArcFaceLoss (margin in degrees there, W transposed).

Deviations from the reference implementation: cosines are clamped to [−1 + ε, 1 − ε] for arccos;
the reference clamped to [1e-10, 1 − 1e-10], which mapped every negative target cosine to ≈ 0 and
zeroed its gradient; the θ + m > π case is handled as above (the reference never reached it only
because of that clamp); x is normalised inside. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import (
    ClassWeightLoss,
    additive_angular_margin,
    replace_target,
    target_logit,
)


class ArcFaceLoss(ClassWeightLoss):
    """ArcFace (Deng et al. 2019) with learnable class weights."""

    name = "arcface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the ArcFace class weights"] = 5e-4,
        angular_margin: Annotated[float, "additive angular margin m (radians)"] = 0.5,
        feature_scale: Annotated[float, "logit scale s"] = 16.0,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.angular_margin, self.feature_scale = angular_margin, feature_scale

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        target = additive_angular_margin(target_logit(cos, labels), self.angular_margin)
        return cross_entropy(self.feature_scale * replace_target(cos, labels, target), labels)
