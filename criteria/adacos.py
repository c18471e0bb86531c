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
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy, one_hot

from criteria._common import check_labels, clamp_cosine, cosine_logits, init_class_weights


@dataclass
class AdacosHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    dynamic: bool = field(default=True, metadata={"help": "adapt the scale every step (dynamic AdaCos)"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class AdaCosLoss(nn.Module):
    """AdaCos (Zhang et al. 2019): cosine softmax with an adaptive scale."""

    name = "adacos"
    Hparams = AdacosHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = AdacosHparams(**hparams)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))
        s0 = math.sqrt(2.0) * math.log(max(self.hp.n_classes - 1, 2))
        self.register_buffer("scale", torch.tensor(s0, dtype=torch.float64))

    def param_groups(self) -> list[dict]:
        return [
            {"params": [self.class_weights], "lr": self.hp.lr, "weight_decay": 0.0, "name": "adacos_weights"}
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        cos = cosine_logits(batch, self.class_weights)
        if self.hp.dynamic and self.training and cos.shape[1] > 1:  # one class: no B_avg
            with torch.no_grad():
                target = one_hot(labels, cos.shape[1]).to(torch.bool)
                s = self.scale.to(cos.dtype)
                b_avg = torch.where(target, 0.0, torch.exp(s * cos)).sum(1).mean()
                theta_med = torch.median(torch.arccos(clamp_cosine(cos[target])))
                angle = torch.clamp(theta_med, max=math.pi / 4)
                self.scale.copy_(torch.log(b_avg) / torch.cos(angle))
        return cross_entropy(self.scale.to(cos.dtype) * cos, labels)
