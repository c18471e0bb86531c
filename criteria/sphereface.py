"""SphereFace: angular softmax (A-Softmax) with a multiplicative angular margin.

Liu, Wen, Yu, Li, Raj, Song. "SphereFace: Deep Hypersphere Embedding for Face Recognition."
CVPR 2017. https://arxiv.org/abs/1704.08063

With normalised class weights ŵ_c, θ_ic the angle between x_i and ŵ_c, integer margin m and
k = ⌊m θ / π⌋ (so θ ∈ [kπ/m, (k+1)π/m]):

    ψ(θ)     = (−1)^k cos(m θ) − 2k                   (monotonically decreasing on [0, π])
    logit_ic = s ‖x_i‖ cos θ_ic                         (c ≠ y_i)
    logit_iy = s ‖x_i‖ (λ cos θ_iy + ψ(θ_iy)) / (1 + λ)
    L        = mean_i CE(logit_i, y_i)

m = ``--loss_sphereface_margin`` (4), s = ``--loss_sphereface_scale`` (1), λ =
``--loss_sphereface_anneal`` (0: the pure A-Softmax; the paper anneals λ from large to ~5 during
training, which a schedule can do by setting ``criterion.hp.anneal``). The embedding is *not*
normalised (its norm scales the logits, as in the paper). W ∈ ℝ^{C×D} is initialised U(±1/√D),
learned with ``--loss_sphereface_lr`` (5e-4), no weight decay. With λ = 0 equal to
pytorch-metric-learning's SphereFaceLoss. Not part of the study. Memory O(B·C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from criteria._common import check_labels, clamp_cosine, cosine_logits, init_class_weights, replace_target


@dataclass
class SpherefaceHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    margin: int = field(default=4, metadata={"help": "integer angular multiplier m"})
    scale: float = field(default=1.0, metadata={"help": "extra logit scale s"})
    anneal: float = field(default=0.0, metadata={"help": "λ blending cos θ into the target logit"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class SphereFaceLoss(nn.Module):
    """SphereFace / A-Softmax (Liu et al. 2017) with learnable class weights."""

    name = "sphereface"
    Hparams = SpherefaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = SpherefaceHparams(**hparams)
        if self.hp.margin < 1:
            raise ValueError(f"sphereface margin must be an integer >= 1, got {self.hp.margin}")
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.class_weights],
                "lr": self.hp.lr,
                "weight_decay": 0.0,
                "name": "sphereface_weights",
            }
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings (not normalised); labels: (B,) class ids. Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        m = int(self.hp.margin)
        cos = cosine_logits(batch, self.class_weights)
        theta = torch.arccos(clamp_cosine(cos.gather(1, labels[:, None]).squeeze(1)))
        k = torch.floor(m * theta.detach() / torch.pi)
        psi = (1.0 - 2.0 * torch.remainder(k, 2)) * torch.cos(m * theta) - 2.0 * k
        target = (self.hp.anneal * torch.cos(theta) + psi) / (1.0 + self.hp.anneal)
        logits = replace_target(cos, labels, target) * batch.norm(dim=1, keepdim=True) * self.hp.scale
        return cross_entropy(logits, labels)
