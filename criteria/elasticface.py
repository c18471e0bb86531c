"""ElasticFace: margin-penalised softmax with a random (elastic) margin, ArcFace or CosFace form.

Boutros, Damer, Kirchbuchner, Kuijper. "ElasticFace: Elastic Margin Loss for Deep Face
Recognition." CVPR Workshops 2022. https://arxiv.org/abs/2109.09416

For every sample and step a margin is drawn, m_i ~ N(m, σ²), and applied to the target class of
cos θ_ic = x̂_iᵀŵ_c (normalised inside):

    arc form (ElasticFace-Arc):  logit_iy = s cos(θ_iy + m_i)   (s (cos θ_iy − m_i sin m_i) past π)
    cos form (ElasticFace-Cos):  logit_iy = s (cos θ_iy − m_i)
    logit_ic = s cos θ_ic (c ≠ y_i),   L = mean_i CE(logit_i, y_i)

The form is ``--loss_elasticface_form`` (arc), the other choice being cos; s =
``--loss_elasticface_scale`` (64), σ = ``--loss_elasticface_std`` (0.05) and the mean margin
m = ``--loss_elasticface_margin``, which when unset is 0.5 for the arc form and 0.35 for the cos
form; the paper's values. Margins are drawn with the global torch RNG (seeded by ``--seed``) in
training mode; in eval mode the mean margin m is used, so evaluating the loss is deterministic.
The "+" variant (margins sorted by difficulty) is not included. W ∈ ℝ^{C×D} is initialised
U(±1/√D), learned with ``--loss_elasticface_lr`` (5e-4), no weight decay. With σ = 0 the forms
equal ArcFace and CosFace. Deviation from the authors' code: the arc form has the θ + m > π guard
of ArcFace.
Not part of the study and not in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch.nn.functional import cross_entropy

from ._common import (
    ClassWeightLoss,
    additive_angular_margin,
    replace_target,
    target_logit,
)

_DEFAULT_MARGIN = {"arc": 0.5, "cos": 0.35}


class ElasticFaceLoss(ClassWeightLoss):
    """ElasticFace (Boutros et al. 2022), ArcFace or CosFace form, with learnable class weights."""

    name = "elasticface"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        form: Annotated[Literal["arc", "cos"], "arc (ElasticFace-Arc) or cos (ElasticFace-Cos)"] = "arc",
        lr: Annotated[float, "learning rate of the ElasticFace class weights"] = 5e-4,
        margin: Annotated[float | None, "mean margin m (None: 0.5 arc, 0.35 cos)"] = None,
        std: Annotated[float, "standard deviation σ of the margin"] = 0.05,
        scale: Annotated[float, "logit scale s"] = 64.0,
    ) -> None:
        if form not in _DEFAULT_MARGIN:
            raise ValueError(f"elasticface form must be 'arc' or 'cos', got '{form}'")
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.form, self.std, self.scale = form, std, scale
        self.margin = _DEFAULT_MARGIN[form] if margin is None else float(margin)

    def sample_margins(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """m_i ~ N(m, σ²) in training mode, m in eval mode; shape (n,)."""
        mean = torch.full((n,), self.margin, dtype=like.dtype, device=like.device)
        if not self.training or self.std == 0:
            return mean
        return torch.normal(mean, self.std)

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        cos_y = target_logit(cos, labels)
        margins = self.sample_margins(len(batch), cos)
        if self.form == "arc":
            target = additive_angular_margin(cos_y, margins)
        else:
            target = cos_y - margins
        return cross_entropy(self.scale * replace_target(cos, labels, target), labels)
