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

from dataclasses import dataclass, field

import torch
from torch import nn

from criteria._common import TRIPLETS, PairBasedLoss, check_labels, keep_anchors, row_distances, zero_loss


@dataclass
class MarginHparams:
    margin: float = field(default=0.2, metadata={"help": "margin α around the boundary β"})
    beta: float = field(default=1.2, metadata={"help": "initial class boundary β"})
    beta_lr: float = field(default=5e-4, metadata={"help": "learning rate of the per-class β"})
    nu: float = field(default=0.0, metadata={"help": "weight ν of the β regulariser"})
    beta_constant: bool = field(default=False, metadata={"help": "keep β fixed (not learned)"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})


class MarginLoss(PairBasedLoss):
    """Margin loss (Wu et al. 2017) with a learnable boundary per class."""

    name = "margin"
    Hparams = MarginHparams
    requires_miner = True
    tuple_kind = TRIPLETS
    supports_xbm = True

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__(batchminer, **hparams)
        beta = torch.full((self.hp.n_classes,), float(self.hp.beta))
        if self.hp.beta_constant:
            self.register_buffer("beta", beta)
        else:
            self.beta = nn.Parameter(beta)

    def param_groups(self) -> list[dict]:
        """β gets its own learning rate and no weight decay."""
        if self.hp.beta_constant:
            return []
        return [{"params": [self.beta], "lr": self.hp.beta_lr, "weight_decay": 0.0, "name": "margin_beta"}]

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), positives/negatives from ``ref``."""
        check_labels(q_labels, self.hp.n_classes, self.name)
        anchors, positives, negatives = keep_anchors(self.batchminer(ref, ref_labels), TRIPLETS, len(queries))
        if len(anchors) == 0:
            return zero_loss(queries) + self.beta.sum() * 0.0
        beta = self.beta[q_labels.to(self.beta.device)[anchors]].to(queries.dtype)
        d_ap = row_distances(queries[anchors], ref[positives])
        d_an = row_distances(queries[anchors], ref[negatives])
        pos = torch.relu(d_ap - beta + self.hp.margin)
        neg = torch.relu(beta - d_an + self.hp.margin)
        n_active = ((pos > 0).sum() + (neg > 0).sum()).clamp_min(1)
        total = (pos + neg).sum() + self.hp.nu * beta.sum()
        return total / n_active
