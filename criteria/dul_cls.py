"""DUL-cls: data uncertainty learning with a classifier on a sampled embedding.

Chang, Lan, Yao, Wei. "Data Uncertainty Learning in Face Recognition." CVPR 2020.
https://arxiv.org/abs/2003.02470

Each image i is a diagonal Gaussian N(μ_i, diag σ_i²) (packed ``[μ | log σ²]``,
``--embedding_distribution gaussian``). One reparametrised sample s_i = μ_i + ε_i·σ_i per image
is classified by ArcFace (class weights W ∈ ℝ^{C×D}, cos θ_ic = ŝ_iᵀŵ_c):

    logit_ic = s · cos θ_ic  (c ≠ y_i),   logit_iy = s · cos(θ_iy + m)   (ArcFace's target logit)
    L = mean_i CE(logit_i, y_i) + λ · mean_i KL(N(μ_i, σ_i²) ‖ N(0, I))

s = ``--loss_dul_cls_feature_scale`` (16), m = ``--loss_dul_cls_angular_margin`` (0.5 rad),
λ = ``--loss_dul_cls_kl_weight`` (0.01, the paper's value); W is initialised U(±1/√D) and trained
with ``--loss_dul_cls_lr`` (5e-4, no weight decay). ε ~ N(0, I) is drawn from the loss's seeded
generator (``--seed``; its state is saved with the loss), one (1, B, D) draw per batch. As σ² → 0
the loss is ArcFace on μ plus λ·KL.

Deviations from the paper: the classifier is this benchmark's ArcFace (scale 16 instead of the
face-recognition 64; the angular margin continued past θ + m > π as in criteria/arcface.py),
with the sample normalised inside the cosine; the sample is drawn in every call, also in eval
mode (the loss is a training objective; retrieval uses μ). Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import (
    GAUSSIAN,
    ClassWeightLoss,
    SeededGenerators,
    additive_angular_margin,
    gaussian_kl_to_standard,
    replace_target,
    sample_gaussian,
    split_gaussian,
    target_logit,
)


class DULClsLoss(SeededGenerators, ClassWeightLoss):
    """DUL-cls (Chang et al. 2020): ArcFace on a reparametrised sample + λ·KL to N(0, I)."""

    name = "dul_cls"
    distribution = GAUSSIAN

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        seed: int,
        lr: Annotated[float, "learning rate of the DUL-cls class weights"] = 5e-4,
        angular_margin: Annotated[float, "additive angular margin m (radians)"] = 0.5,
        feature_scale: Annotated[float, "logit scale s"] = 16.0,
        kl_weight: Annotated[float, "weight λ of the KL to N(0, I)"] = 0.01,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.init_generators(seed)
        self.angular_margin, self.feature_scale, self.kl_weight = angular_margin, feature_scale, kl_weight

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, 2D) packed ``[μ | log σ²]``; labels: (B,) in [0, n_classes). Returns a scalar."""
        mean, log_var = split_gaussian(batch, self.embed_dim)
        sample = sample_gaussian(mean, log_var, 1, self.generator(batch.device))[0]
        cos, labels = self.cosines(sample, labels)
        target = additive_angular_margin(target_logit(cos, labels), self.angular_margin)
        xent = cross_entropy(self.feature_scale * replace_target(cos, labels, target), labels)
        return xent + self.kl_weight * gaussian_kl_to_standard(mean, log_var).mean()
