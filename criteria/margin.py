"""Margin loss with learnable per-class boundaries β.

Wu, Manmatha, Smola, Krähenbühl. "Sampling Matters in Deep Embedding Learning." ICCV 2017.
https://arxiv.org/abs/1706.07567

For every mined triplet (a, p, n), with Euclidean distances d and β_a = β[y_a]:

    ℓ⁺ = [d(a, p) − β_a + α]₊        ℓ⁻ = [β_a − d(a, n) + α]₊
    L  = ( Σ_T (ℓ⁺ + ℓ⁻) + ν · Σ_T β_a ) / max(1, #{ℓ⁺ > 0} + #{ℓ⁻ > 0})

α = ``--loss_margin_margin`` (0.2), β initialised to ``--loss_margin_beta`` (1.2) for each of the
C training classes and learned with its own learning rate ``--loss_margin_beta_lr`` (5e-4, no
weight decay), or kept fixed with ``--loss_margin_beta_constant``. ν = ``--loss_margin_nu``.

Deviations from the reference implementation (all are fixes):
* the normaliser counts active *pairs* (a sum of the two indicator counts), as in the paper's code;
  the reference added two bool tensors, which is a logical OR and counts triplets;
* the ν·Σβ regulariser works (the reference raised NameError for ν ≠ 0) and, as in the authors'
  code, is divided by the same pair count;
* vectorised (no loop over triplets); no mined triplet gives a differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from ._common import TRIPLETS, MinedLoss, check_labels, row_distances


class MarginLoss(MinedLoss):
    """Margin loss (Wu et al. 2017) with a learnable boundary per class."""

    name = "margin"
    tuple_kinds = (TRIPLETS,)

    def __init__(
        self,
        *,
        n_classes: int,
        batchminer: nn.Module,
        margin: Annotated[float, "margin α around the boundary β"] = 0.2,
        beta: Annotated[float, "initial class boundary β"] = 1.2,
        beta_lr: Annotated[float, "learning rate of the per-class β"] = 5e-4,
        nu: Annotated[float, "weight ν of the β regulariser"] = 0.0,
        beta_constant: Annotated[bool, "keep β fixed (not learned)"] = False,
    ) -> None:
        super().__init__(batchminer=batchminer)
        self.n_classes, self.margin, self.beta_lr, self.nu = n_classes, margin, beta_lr, nu
        self.beta_constant = beta_constant
        initial = torch.full((n_classes,), float(beta))
        if beta_constant:
            self.register_buffer("beta", initial)
        else:
            self.beta = nn.Parameter(initial)

    def param_groups(self) -> list[dict]:
        """β gets its own learning rate and no weight decay."""
        if self.beta_constant:
            return []
        return [{"params": [self.beta], "lr": self.beta_lr, "weight_decay": 0.0, "name": "margin_beta"}]

    def tuple_loss(self, tuples, queries, q_labels, ref, ref_labels) -> torch.Tensor:
        # triplets (a, p, n): anchors index the queries, positives and negatives the references
        check_labels(q_labels, self.n_classes, self.name)
        anchors, positives, negatives = tuples
        beta = self.beta[q_labels.to(self.beta.device)[anchors]].to(queries.dtype)
        d_ap = row_distances(queries[anchors], ref[positives])
        d_an = row_distances(queries[anchors], ref[negatives])
        pos = torch.relu(d_ap - beta + self.margin)
        neg = torch.relu(beta - d_an + self.margin)
        n_active = ((pos > 0).sum() + (neg > 0).sum()).clamp_min(1)
        total = (pos + neg).sum() + self.nu * beta.sum()
        return total / n_active
