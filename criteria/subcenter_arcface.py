"""Sub-center ArcFace.

Deng, Guo, Liu, Xue, Zafeiriou. "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy
Web Faces." ECCV 2020. https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf

Each class c has K sub-centres w_{c,1..K}; the class cosine is the closest one,
cos θ_ic = max_k x̂_iᵀŵ_{c,k}, and the loss is ArcFace on those cosines:

    logit_ic = s cos θ_ic (c ≠ y_i),   logit_iy = s cos(θ_iy + m)  (s (cos θ_iy − m sin m) past π),
    L = mean_i CE(logit_i, y_i)

K = ``--loss_subcenter_arcface_sub_centers`` (3), s = ``--loss_subcenter_arcface_scale`` (64),
m = ``--loss_subcenter_arcface_margin`` (0.5 rad), the paper's values. The (K·C) × D weights (row
k·C + c is sub-centre k of class c) are initialised U(±1/√D) and learned with
``--loss_subcenter_arcface_lr`` (5e-4), no weight decay. Equal to pytorch-metric-learning's
SubCenterArcFaceLoss (its weight column c·K + k is our row k·C + c). The paper's later step of dropping non-dominant sub-centres and outliers is
not included. Not part of the study. Memory O(B·C·K).
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


@dataclass
class SubcenterArcfaceHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the sub-centre weights"})
    margin: float = field(default=0.5, metadata={"help": "additive angular margin m (radians)"})
    scale: float = field(default=64.0, metadata={"help": "logit scale s"})
    sub_centers: int = field(default=3, metadata={"help": "sub-centres K per class"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class SubCenterArcFaceLoss(nn.Module):
    """Sub-center ArcFace (Deng et al. 2020) with K learnable sub-centres per class."""

    name = "subcenter_arcface"
    Hparams = SubcenterArcfaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = SubcenterArcfaceHparams(**hparams)
        self.class_weights = nn.Parameter(
            init_class_weights(self.hp.n_classes * self.hp.sub_centers, self.hp.embed_dim)
        )

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.class_weights],
                "lr": self.hp.lr,
                "weight_decay": 0.0,
                "name": "subcenter_arcface_weights",
            }
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        cos = cosine_logits(batch, self.class_weights)
        # sub-centre-major layout (B, K, C): the max over K runs across contiguous C-long rows
        cos = cos.view(len(batch), self.hp.sub_centers, self.hp.n_classes).max(dim=1).values
        target = additive_angular_margin(cos.gather(1, labels[:, None]).squeeze(1), self.hp.margin)
        return cross_entropy(self.hp.scale * replace_target(cos, labels, target), labels)
