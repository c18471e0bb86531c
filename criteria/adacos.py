"""AdaCos: cosine softmax with an adaptively scaled logit.

Zhang, Zhao, Qiao, Wang, Li. "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning
Deep Face Representations." CVPR 2019. https://arxiv.org/abs/1905.00292

Cosine logits cos θ_ic = x̂_iᵀŵ_c (normalised inside) are scaled by s, with no margin:
L = mean_i CE(s · cos θ_i, y_i). The fixed AdaCos scale is s₀ = √2 · log(C − 1) (eq. 12). The
dynamic AdaCos (``--loss_adacos_dynamic``, default on) updates s before each training step, from
the current batch and the previous s (eq. 15-16), without gradient:

    B_avg = 1/B · Σ_i Σ_{c ≠ y_i} exp(s · cos θ_ic)
    θ_med = median_i θ_{i y_i}
    s     ← log(B_avg) / cos(min(π/4, θ_med))

(the median of an even count is the lower middle value, like ``torch.median`` in the authors'
code). s is a buffer, so it is saved in and restored from checkpoints; it is only updated in
training mode. W ∈ ℝ^{C×D} is initialised U(±1/√D), learned with ``--loss_adacos_lr`` (5e-4), no
weight decay. Not part of the study and not in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch.nn.functional import cross_entropy, one_hot

from ._common import ClassWeightLoss, clamp_cosine


class AdaCosLoss(ClassWeightLoss):
    """AdaCos (Zhang et al. 2019): cosine softmax with an adaptive scale."""

    name = "adacos"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the AdaCos class weights"] = 5e-4,
        dynamic: Annotated[bool, "adapt the scale every step (dynamic AdaCos)"] = True,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.dynamic = dynamic
        s0 = math.sqrt(2.0) * math.log(max(n_classes - 1, 2))
        self.register_buffer("scale", torch.tensor(s0, dtype=torch.float64))

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        if self.dynamic and self.training and cos.shape[1] > 1:  # one class: no B_avg
            with torch.no_grad():
                target = one_hot(labels, cos.shape[1]).to(torch.bool)
                s = self.scale.to(cos.dtype)
                b_avg = torch.where(target, 0.0, torch.exp(s * cos)).sum(1).mean()
                theta_med = torch.median(torch.arccos(clamp_cosine(cos[target])))
                angle = torch.clamp(theta_med, max=math.pi / 4)
                self.scale.copy_(torch.log(b_avg) / torch.cos(angle))
        return cross_entropy(self.scale.to(cos.dtype) * cos, labels)
