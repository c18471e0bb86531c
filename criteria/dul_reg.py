"""DUL-reg: data uncertainty learning by regressing the class centres.

Chang, Lan, Yao, Wei. "Data Uncertainty Learning in Face Recognition." CVPR 2020.
https://arxiv.org/abs/2003.02470

Each image i is a diagonal Gaussian N(μ_i, diag σ_i²) (packed ``[μ | log σ²]``,
``--embedding_distribution gaussian``), read as the distribution of its class centre: the loss is
the Gaussian negative log-likelihood of the (unit) class weight ŵ_{y_i} of a classifier,

    L_reg = mean_i ½ Σ_d [ (ŵ_{y_i,d} − μ_id)² / σ_id² + log σ_id² ]
    L     = L_reg + γ · ArcFace(μ, y)

where ArcFace(μ, y) = mean_i CE(logit_i, y_i) with logit_ic = s·cos θ_ic (c ≠ y_i),
logit_iy = s·cos(θ_iy + m), cos θ_ic = μ̂_iᵀŵ_c, trains the class weights W ∈ ℝ^{C×D}.

γ = ``--loss_dul_reg_cls_weight`` (1.0), s = ``--loss_dul_reg_feature_scale`` (16),
m = ``--loss_dul_reg_angular_margin`` (0.5 rad); W is initialised U(±1/√D) and trained with
``--loss_dul_reg_lr`` (5e-4, no weight decay). The constant (D/2) log 2π of the NLL is dropped.

Deviations from the paper: the paper regresses the weights of a classifier trained beforehand and
then frozen (two stages). Here the two stages run jointly: the ArcFace term on μ trains W while
the regression target ŵ_{y_i} is detached (the regression never moves W: within each step the
classifier is frozen), and W is normalised (ArcFace's weights act only through their direction).
``--loss_dul_reg_cls_weight 0`` regresses fixed random unit centres. The NLL is unbounded below
as σ² → 0 when μ hits its centre exactly, as in the paper. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy, normalize

from ._common import (
    GAUSSIAN,
    ClassWeightLoss,
    additive_angular_margin,
    replace_target,
    split_gaussian,
    target_logit,
)


class DULRegLoss(ClassWeightLoss):
    """DUL-reg (Chang et al. 2020): Gaussian NLL of the class centre + ArcFace training the centres."""

    name = "dul_reg"
    distribution = GAUSSIAN

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the DUL-reg class weights (centres)"] = 5e-4,
        cls_weight: Annotated[float, "weight γ of the ArcFace term that trains the centres"] = 1.0,
        angular_margin: Annotated[float, "additive angular margin m (radians)"] = 0.5,
        feature_scale: Annotated[float, "logit scale s"] = 16.0,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.cls_weight, self.angular_margin, self.feature_scale = cls_weight, angular_margin, feature_scale

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, 2D) packed ``[μ | log σ²]``; labels: (B,) in [0, n_classes). Returns a scalar."""
        mean, log_var = split_gaussian(batch, self.embed_dim)
        cos, labels = self.cosines(mean, labels)
        # the regression target: the unit class weight, frozen for the regression (see above)
        centre = normalize(self.class_weights.detach()[labels].to(mean.dtype), dim=1)
        nll = 0.5 * ((centre - mean).pow(2) * torch.exp(-log_var) + log_var).sum(1).mean()
        target = additive_angular_margin(target_logit(cos, labels), self.angular_margin)
        xent = cross_entropy(self.feature_scale * replace_target(cos, labels, target), labels)
        return nll + self.cls_weight * xent
