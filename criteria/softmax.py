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

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from criteria._common import check_labels, cosine_logits, init_class_weights


@dataclass
class SoftmaxHparams:
    lr: float = field(default=1e-5, metadata={"help": "learning rate of the class weights"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature T"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class SoftmaxLoss(nn.Module):
    """Normalised softmax (Zhai & Wu 2019) with learnable class weights."""

    name = "softmax"
    Hparams = SoftmaxHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = SoftmaxHparams(**hparams)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))

    def param_groups(self) -> list[dict]:
        return [
            {"params": [self.class_weights], "lr": self.hp.lr, "weight_decay": 0.0, "name": "softmax_weights"}
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        logits = cosine_logits(batch, self.class_weights) / self.hp.temperature
        return cross_entropy(logits, labels.to(batch.device))
