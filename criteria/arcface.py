"""ArcFace: additive angular margin loss.

Deng, Guo, Xue, Zafeiriou. "ArcFace: Additive Angular Margin Loss for Deep Face Recognition."
CVPR 2019. https://arxiv.org/abs/1801.07698

With class weights W ∈ ℝ^{C×D}, cos θ_ic = x̂_iᵀŵ_c (both L2-normalised inside), scale s and margin m:

    logit_ic = s · cos θ_ic                     (c ≠ y_i)
    logit_iy = s · cos(θ_iy + m)                 if θ_iy + m ≤ π
             = s · (cos θ_iy − m · sin m)         otherwise (keeps the logit decreasing in θ)
    L = mean_i CE(logit_i, y_i)

s = ``--loss_arcface_feature_scale`` (16), m = ``--loss_arcface_angular_margin`` (0.5 rad); W is
initialised U(±1/√D) and trained with ``--loss_arcface_lr`` (5e-4), no weight decay. Equal to
pytorch-metric-learning's ArcFaceLoss (margin in degrees there, W transposed).

Deviations from the reference implementation: cosines are clamped to [−1 + ε, 1 − ε] for arccos;
the reference clamped to [1e-10, 1 − 1e-10], which mapped every negative target cosine to ≈ 0 and
zeroed its gradient; the θ + m > π case is handled as above (the reference never reached it only
because of that clamp); x is normalised inside. Memory O(B·C).
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
class ArcfaceHparams:
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the class weights"})
    angular_margin: float = field(default=0.5, metadata={"help": "additive angular margin m (radians)"})
    feature_scale: float = field(default=16.0, metadata={"help": "logit scale s"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class ArcFaceLoss(nn.Module):
    """ArcFace (Deng et al. 2019) with learnable class weights."""

    name = "arcface"
    Hparams = ArcfaceHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = ArcfaceHparams(**hparams)
        self.class_weights = nn.Parameter(init_class_weights(self.hp.n_classes, self.hp.embed_dim))

    def param_groups(self) -> list[dict]:
        return [
            {"params": [self.class_weights], "lr": self.hp.lr, "weight_decay": 0.0, "name": "arcface_weights"}
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        cos = cosine_logits(batch, self.class_weights)
        target = additive_angular_margin(cos.gather(1, labels[:, None]).squeeze(1), self.hp.angular_margin)
        return cross_entropy(self.hp.feature_scale * replace_target(cos, labels, target), labels)
