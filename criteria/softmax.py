"""Normalised softmax (NormSoftmax) classification loss.

Zhai, Wu. "Classification is a Strong Baseline for Deep Metric Learning." BMVC 2019.
https://arxiv.org/abs/1811.12649

With class weights W ∈ ℝ^{C×D}, x̂ = x/‖x‖ and ŵ_c = w_c/‖w_c‖ and temperature T:

    L = mean_i CE( x̂_iᵀŵ_c / T , y_i )

T = ``--loss_softmax_temperature`` (0.05). W is initialised U(±1/√D) and trained with its own
learning rate ``--loss_softmax_lr`` (1e-5; the study's SOP runs used 2e-3), no weight decay.
Equal to pytorch-metric-learning's NormalizedSoftmaxLoss (its W is our Wᵀ).

Deviations from the reference implementation: x is normalised inside, as in the paper (the
reference relied on an ``_normalize`` architecture; for normalised inputs nothing changes).
Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.nn.functional import cross_entropy

from ._common import ClassWeightLoss


class SoftmaxLoss(ClassWeightLoss):
    """Normalised softmax (Zhai & Wu 2019) with learnable class weights."""

    name = "softmax"

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the softmax class weights"] = 1e-5,
        temperature: Annotated[float, "softmax temperature T"] = 0.05,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        self.temperature = temperature

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, labels = self.cosines(batch, labels)
        return cross_entropy(cos / self.temperature, labels)
