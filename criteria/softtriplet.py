"""SoftTriple loss: softmax over classes with K learnable centres per class.

Qian, Shang, Sun, Hu, Li, Jin. "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling."
ICCV 2019. https://arxiv.org/abs/1909.05235 (authors' code: github.com/idstcv/SoftTriple)

With centres w_{c,k} (K per class, each L2-normalised) and x̂ the normalised embedding:

    S_{ic}  = Σ_k softmax_k( x̂_iᵀw_{c,k} / γ ) · x̂_iᵀw_{c,k}        (relaxed class similarity)
    L_cls   = mean_i CE( λ (S_i − δ e_{y_i}), y_i )
    R       = Σ_c Σ_{k < k'} sqrt(2 + 1e-5 − 2 w_{c,k}ᵀw_{c,k'}) / (C K (K − 1))
    L       = L_cls + τ R                                              (R only if K > 1)

K = ``--loss_softtriplet_n_centroids`` (2), δ = ``--loss_softtriplet_margin_delta`` (0.01), γ =
``--loss_softtriplet_gamma`` (0.1, entering as 1/γ), λ = ``--loss_softtriplet_lambda`` (8), τ =
``--loss_softtriplet_reg_weight`` (0.2). These are the study's flag defaults; the paper uses λ = 20,
K = 10. The centres (K·C × D, row k·C + c is centre k of class c) are initialised U(±1/√(C·K))
and learned with learning rate ``--lr`` × ``--loss_softtriplet_lrmulti`` (1), no weight decay.
L_cls equals pytorch-metric-learning's SoftTripleLoss (centers_per_class = K, la = λ; its centre
column c·K + k is our row k·C + c), which has no R by default.

Deviations from the reference implementation (all fixes of §2.14's bugs): it crashed on the
missing ``loss_softtriplet_lr`` attribute (``lrmulti`` is read now); centres are normalised per
centre, not per embedding dimension; the softmax runs over the K centres of a class, not over
classes; the multiplier is 1/γ, not γ. R is computed from the K(K−1)/2 centre pairs of each class
instead of from a (C·K)² matrix (2 GB for SOP). x is normalised inside. Memory O(B·C·K).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy, normalize

from criteria._common import check_labels, replace_target


@dataclass
class SofttripletHparams:
    n_centroids: int = field(default=2, metadata={"help": "centres K per class"})
    margin_delta: float = field(default=0.01, metadata={"help": "margin δ"})
    gamma: float = field(default=0.1, metadata={"help": "γ: the centre softmax uses 1/γ"})
    la: float = field(default=8.0, metadata={"flag": "loss_softtriplet_lambda", "help": "logit scale λ"})
    reg_weight: float = field(default=0.2, metadata={"help": "τ, weight of the centre regulariser"})
    lrmulti: float = field(default=1.0, metadata={"help": "centre learning rate = --lr × lrmulti"})
    lr: float = field(default=1e-5, metadata={"global": "lr"})
    n_classes: int = field(default=1, metadata={"global": "n_classes"})
    embed_dim: int = field(default=128, metadata={"global": "embed_dim"})


class SoftTripleLoss(nn.Module):
    """SoftTriple (Qian et al. 2019) with K learnable centres per class."""

    name = "softtriplet"
    Hparams = SofttripletHparams
    requires_miner = False
    tuple_kind = None

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = SofttripletHparams(**hparams)
        n = self.hp.n_classes * self.hp.n_centroids
        bound = 1.0 / n**0.5
        self.centroids = nn.Parameter(torch.empty(n, self.hp.embed_dim).uniform_(-bound, bound))

    def param_groups(self) -> list[dict]:
        return [
            {
                "params": [self.centroids],
                "lr": self.hp.lr * self.hp.lrmulti,
                "weight_decay": 0.0,
                "name": "softtriplet_centroids",
            }
        ]

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.hp.n_classes, self.name)
        labels = labels.to(batch.device)
        C, K = self.hp.n_classes, self.hp.n_centroids
        centres = normalize(self.centroids.to(batch.dtype), dim=1)
        # centre-major layout (B, K, C): the softmax over K runs across C-long contiguous rows,
        # several times faster than a softmax over a trailing dimension of size K
        sim = (normalize(batch, dim=1) @ centres.T).view(len(batch), K, C)
        weights = torch.softmax(sim / self.hp.gamma, dim=1)
        sim_class = (weights * sim).sum(1)
        target = sim_class.gather(1, labels[:, None]).squeeze(1) - self.hp.margin_delta
        loss = cross_entropy(self.hp.la * replace_target(sim_class, labels, target), labels)
        if self.hp.reg_weight > 0 and K > 1:
            per_centre = centres.view(K, C, -1)
            first, second = torch.triu_indices(K, K, offset=1, device=batch.device)
            dots = (per_centre[first] * per_centre[second]).sum(-1)  # (K(K−1)/2, C)
            reg = torch.sqrt(2.0 + 1e-5 - 2.0 * dots).sum() / (C * K * (K - 1))
            loss = loss + self.hp.reg_weight * reg
        return loss
