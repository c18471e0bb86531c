"""AdaFace: quality (feature-norm) adaptive margin.

Kim, Jain, Liu. "AdaFace: Quality Adaptive Margin for Face Recognition." CVPR 2022.
https://arxiv.org/abs/2204.00964

The embedding norm ‖x_i‖ is a proxy for image quality. With the batch statistics μ, σ of the
(clipped, detached) norms kept as moving averages, the normalised quality is

    ẑ_i = clip( h · (‖x_i‖ − μ) / (σ + ε), −1, 1 )

and the target logit gets an angular and an additive margin that depend on it
(g_angle = −m ẑ_i, g_add = m ẑ_i + m):

    logit_iy = s · ( cos(clip(θ_iy + g_angle, ε, π − ε)) − g_add )
    logit_ic = s · cos θ_ic (c ≠ y_i),      L = mean_i CE(logit_i, y_i)

with cos θ_ic = x̂_iᵀŵ_c clamped to [−1 + ε, 1 − ε], ε = 1e-3. Defaults are the paper's:
m = ``--loss_adaface_margin`` (0.4), h = ``--loss_adaface_h`` (0.333), s = ``--loss_adaface_scale``
(64), momentum ``--loss_adaface_momentum`` (0.01); μ and σ start at 20 and 100 and are buffers
(saved in checkpoints), updated before use and only in training mode, as in the authors' code.
The loss needs the *unnormalised* embedding (an ``--arch`` without ``_normalize``): with unit
norms ẑ is constant and AdaFace reduces to a fixed-margin loss. W ∈ ℝ^{C×D} is initialised
U(±1/√D), learned with ``--loss_adaface_lr`` (5e-4), no weight decay. Not part of the study and not
in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from criteria._common import check_labels, cosine_logits, init_class_weights, replace_target

_EPS = 1e-3


@dataclass
class AdafaceHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    margin: float = field(default=0.4, metadata={"help": "margin m"})
    h: float = field(default=0.333, metadata={"help": "concentration h of the normalised norm"})
    scale: float = field(default=64.0, metadata={"help": "logit scale s"})
    momentum: float = field(default=0.01, metadata={"help": "momentum of the norm statistics"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class AdaFaceLoss(nn.Module):
    """AdaFace (Kim et al. 2022) with learnable class weights."""

    name = "adaface"
    Hparams = AdafaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = AdafaceHparams(**hparams)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))
        self.register_buffer("norm_mean", torch.tensor(20.0, dtype=torch.float64))
        self.register_buffer("norm_std", torch.tensor(100.0, dtype=torch.float64))

    def param_groups(self) -> list[dict]:
        return [
            {"params": [self.class_weights], "lr": self.hp.lr, "weight_decay": 0.0, "name": "adaface_weights"}
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) unnormalised embeddings; labels: (B,) class ids. Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        m = self.hp.margin
        norms = batch.detach().norm(dim=1).clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                a = self.hp.momentum
                self.norm_mean.mul_(1 - a).add_(a * norms.mean().to(self.norm_mean.dtype))
                if len(norms) > 1:
                    self.norm_std.mul_(1 - a).add_(a * norms.std().to(self.norm_std.dtype))
        mean, std = self.norm_mean.to(batch.dtype), self.norm_std.to(batch.dtype)
        z = ((norms - mean) / (std + _EPS) * self.hp.h).clamp(-1.0, 1.0)
        cos = cosine_logits(batch, self.class_weights).clamp(-1.0 + _EPS, 1.0 - _EPS)
        theta_y = torch.arccos(cos.gather(1, labels[:, None]).squeeze(1))
        target = torch.cos((theta_y - m * z).clamp(_EPS, torch.pi - _EPS)) - (m + m * z)
        return cross_entropy(self.hp.scale * replace_target(cos, labels, target), labels)
