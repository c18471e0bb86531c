"""CosFace: large margin cosine loss (LMCL).

Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu. "CosFace: Large Margin Cosine Loss for Deep Face
Recognition." CVPR 2018. https://arxiv.org/abs/1801.09414

With cos θ_ic = x̂_iᵀŵ_c (both L2-normalised inside):

    logit_ic = s · (cos θ_ic − m · [c = y_i]),    L = mean_i CE(logit_i, y_i)

s = ``--loss_cosface_scale`` (64), m = ``--loss_cosface_margin`` (0.35), the paper's values. W ∈ ℝ^{C×D}
is initialised U(±1/√D), learned with ``--loss_cosface_lr`` (5e-4, like ArcFace in the study), no
weight decay. Equal to pytorch-metric-learning's CosFaceLoss. Not part of the study. Memory O(B·C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from criteria._common import check_labels, cosine_logits, init_class_weights, replace_target


@dataclass
class CosfaceHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    margin: float = field(default=0.35, metadata={"help": "additive cosine margin m"})
    scale: float = field(default=64.0, metadata={"help": "logit scale s"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class CosFaceLoss(nn.Module):
    """CosFace (Wang et al. 2018) with learnable class weights."""

    name = "cosface"
    Hparams = CosfaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = CosfaceHparams(**hparams)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))

    def param_groups(self) -> list[dict]:
        return [
            {"params": [self.class_weights], "lr": self.hp.lr, "weight_decay": 0.0, "name": "cosface_weights"}
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        cos = cosine_logits(batch, self.class_weights)
        target = cos.gather(1, labels[:, None]).squeeze(1) - self.hp.margin
        return cross_entropy(self.hp.scale * replace_target(cos, labels, target), labels)
