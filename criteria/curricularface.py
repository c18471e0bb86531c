"""CurricularFace: adaptive curriculum learning loss.

Huang, Wang, Tai, Liu, Shen, Li, Li, Huang. "CurricularFace: Adaptive Curriculum Learning Loss for
Deep Face Recognition." CVPR 2020. https://arxiv.org/abs/2004.00288

With cos θ_ic = x̂_iᵀŵ_c (normalised inside), the target logit is ArcFace's,
φ_i = cos(θ_iy + m) (cos θ_iy − m sin m past θ + m > π), and a negative c is "hard" when
cos θ_ic > cos(θ_iy + m). Hard negatives are re-weighted by the curriculum parameter t:

    logit_ic = s · cos θ_ic                      easy negative
             = s · cos θ_ic (t + cos θ_ic)        hard negative
    logit_iy = s · φ_i
    t ← α · mean_i cos θ_iy + (1 − α) t           (before each training step, no gradient)

s = ``--loss_curricularface_scale`` (64), m = ``--loss_curricularface_margin`` (0.5), α =
``--loss_curricularface_momentum`` (0.01), t starts at 0, the paper's values. t is a buffer (saved in
checkpoints), updated only in training mode, before it is used, as in the authors' code.
W ∈ ℝ^{C×D} is initialised U(±1/√D), learned with ``--loss_curricularface_lr`` (5e-4), no weight
decay. Not part of the study and not in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from criteria._common import (
    additive_angular_margin,
    check_labels,
    clamp_cosine,
    cosine_logits,
    init_class_weights,
    replace_target,
)


@dataclass
class CurricularfaceHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    margin: float = field(default=0.5, metadata={"help": "additive angular margin m (radians)"})
    scale: float = field(default=64.0, metadata={"help": "logit scale s"})
    momentum: float = field(default=0.01, metadata={"help": "α of the moving average t"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class CurricularFaceLoss(nn.Module):
    """CurricularFace (Huang et al. 2020) with learnable class weights."""

    name = "curricularface"
    Hparams = CurricularfaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = CurricularfaceHparams(**hparams)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))
        self.register_buffer("t", torch.zeros((), dtype=torch.float64))

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.class_weights],
                "lr": self.hp.lr,
                "weight_decay": 0.0,
                "name": "curricularface_weights",
            }
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        m = self.hp.margin
        cos = cosine_logits(batch, self.class_weights)
        cos_y = cos.gather(1, labels[:, None]).squeeze(1)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.hp.momentum).add_(self.hp.momentum * cos_y.mean().to(self.t.dtype))
        with torch.no_grad():
            hard = cos > torch.cos(torch.arccos(clamp_cosine(cos_y)) + m)[:, None]
        t = self.t.to(cos.dtype)
        logits = torch.where(hard, cos * (t + cos), cos)
        logits = replace_target(logits, labels, additive_angular_margin(cos_y, m))
        return cross_entropy(self.hp.scale * logits, labels)
