"""ElasticFace: margin-penalised softmax with a random (elastic) margin, ArcFace or CosFace form.

Boutros, Damer, Kirchbuchner, Kuijper. "ElasticFace: Elastic Margin Loss for Deep Face
Recognition." CVPR Workshops 2022. https://arxiv.org/abs/2109.09416

For every sample and step a margin is drawn, m_i ~ N(m, σ²), and applied to the target class of
cos θ_ic = x̂_iᵀŵ_c (normalised inside):

    arc form (ElasticFace-Arc):  logit_iy = s cos(θ_iy + m_i)   (s (cos θ_iy − m_i sin m_i) past π)
    cos form (ElasticFace-Cos):  logit_iy = s (cos θ_iy − m_i)
    logit_ic = s cos θ_ic (c ≠ y_i),   L = mean_i CE(logit_i, y_i)

``--loss_elasticface_form`` arc | cos (arc), s = ``--loss_elasticface_scale`` (64), m =
``--loss_elasticface_margin`` (default by form: 0.5 arc, 0.35 cos), σ = ``--loss_elasticface_std``
(0.05); the paper's values. Margins are drawn with the global torch RNG (seeded by ``--seed``) in
training mode; in eval mode the mean margin m is used, so evaluating the loss is deterministic.
The "+" variant (margins sorted by difficulty) is not included. W ∈ ℝ^{C×D} is initialised U(±1/√D),
learned with ``--loss_elasticface_lr`` (5e-4), no weight decay. With σ = 0 the forms equal ArcFace
and CosFace. Deviation from the authors' code: the arc form has the θ + m > π guard of ArcFace.
Not part of the study and not in pytorch-metric-learning. Memory O(B·C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from criteria._common import (
    additive_angular_margin,
    check_labels,
    cosine_logits,
    init_class_weights,
    replace_target,
)

_DEFAULT_MARGIN = {"arc": 0.5, "cos": 0.35}


@dataclass
class ElasticfaceHparams:
    form: str = field(
        default="arc",
        metadata={"help": "arc (ElasticFace-Arc) or cos (ElasticFace-Cos)", "choices": ["arc", "cos"]},
    )
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    margin: float | None = field(default=None, metadata={"help": "mean margin m (None: 0.5 arc, 0.35 cos)"})
    std: float = field(default=0.05, metadata={"help": "standard deviation σ of the margin"})
    scale: float = field(default=64.0, metadata={"help": "logit scale s"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class ElasticFaceLoss(nn.Module):
    """ElasticFace (Boutros et al. 2022), ArcFace or CosFace form, with learnable class weights."""

    name = "elasticface"
    Hparams = ElasticfaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = ElasticfaceHparams(**hparams)
        if self.hp.form not in _DEFAULT_MARGIN:
            raise ValueError(f"elasticface form must be 'arc' or 'cos', got '{self.hp.form}'")
        self.margin = _DEFAULT_MARGIN[self.hp.form] if self.hp.margin is None else float(self.hp.margin)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.class_weights],
                "lr": self.hp.lr,
                "weight_decay": 0.0,
                "name": "elasticface_weights",
            }
        ]

    def sample_margins(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """m_i ~ N(m, σ²) in training mode, m in eval mode; shape (n,)."""
        mean = torch.full((n,), self.margin, dtype=like.dtype, device=like.device)
        if not self.training or self.hp.std == 0:
            return mean
        return torch.normal(mean, self.hp.std)

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        cos = cosine_logits(batch, self.class_weights)
        cos_y = cos.gather(1, labels[:, None]).squeeze(1)
        margins = self.sample_margins(len(batch), cos)
        if self.hp.form == "arc":
            target = additive_angular_margin(cos_y, margins)
        else:
            target = cos_y - margins
        return cross_entropy(self.hp.scale * replace_target(cos, labels, target), labels)
