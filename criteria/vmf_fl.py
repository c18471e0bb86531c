"""vMF-FL: von Mises-Fisher feature learning with the vMF mixture loss (vMFML).

Hasnat, Bohné, Milgram, Gentric, Chen. "von Mises-Fisher Mixture Model-based Deep Learning:
Application to Face Verification." arXiv 2017. https://arxiv.org/abs/1706.04264

The classes are the components of a mixture of vMF distributions on S^{D−1} with mean directions
ŵ_c (class weights W ∈ ℝ^{C×D}, normalised inside), equal priors and one concentration κ. The
posterior of class c for a unit feature μ is

    p(c | μ) = C_D(κ) e^{κ ŵ_cᵀμ} / Σ_j C_D(κ) e^{κ ŵ_jᵀμ} = softmax_c(κ ŵ_cᵀμ)

(the normalisers C_D(κ) cancel), and vMFML is its cross-entropy:

    L = mean_i CE(κ_i · μ_iᵀŵ_c, y_i)

Which κ: ``--loss_vmf_fl_kappa_source``

* ``head`` (default): κ_i = exp(log κ_i) from the packed batch ``[μ | log κ]``
  (``--embedding_distribution vmf``): the mixture's concentration chosen per image, so the posterior
  stays a softmax and the network learns a confidence (a sharp posterior where it is sure);
* ``learned``: the paper's single κ shared by all images, a learned scalar (log-parametrised,
  initialised to ``--loss_vmf_fl_kappa``, 16, trained in the class weights' group);
* ``fixed``: the constant κ = ``--loss_vmf_fl_kappa``.

With ``learned`` or ``fixed`` the packed log κ is unused (the κ head gets no gradient). W is
initialised U(±1/√D) and trained with ``--loss_vmf_fl_lr`` (5e-4), no weight decay. With κ_i = s for
every image the loss is the normalised softmax of criteria/softmax.py at temperature 1/s.

Deviations from the paper: the per-image κ (``head``, the default) is this benchmark's probabilistic
reading of the mixture (the paper's κ is one number for all images); μ is normalised inside.
Memory O(B·C).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from ._common import VMF, ClassWeightLoss, split_vmf


class VMFFLLoss(ClassWeightLoss):
    """vMF-FL (Hasnat et al. 2017): softmax over κ·cos to the vMF mixture's mean directions."""

    name = "vmf_fl"
    distribution = VMF

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: Annotated[float, "learning rate of the vMF-FL class weights (and of a learned kappa)"] = 5e-4,
        kappa_source: Annotated[
            Literal["head", "learned", "fixed"],
            "concentration: the packed per-image log kappa, one learned scalar, or the constant --loss_vmf_fl_kappa",
        ] = "head",
        kappa: Annotated[float, "the fixed kappa, or the initial value of a learned one"] = 16.0,
    ) -> None:
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr)
        if kappa_source not in ("head", "learned", "fixed"):
            raise ValueError(f"kappa_source must be head, learned or fixed, got {kappa_source!r}")
        if kappa <= 0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        self.kappa_source, self.kappa = kappa_source, kappa
        if kappa_source == "learned":
            self.log_kappa = nn.Parameter(torch.tensor(math.log(kappa)))

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if self.kappa_source == "learned":
            groups[0]["params"].append(self.log_kappa)
        return groups

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D + 1) packed ``[μ | log κ]``; labels: (B,). Returns a scalar."""
        mean, log_kappa = split_vmf(batch, self.embed_dim)
        cos, labels = self.cosines(mean, labels)
        if self.kappa_source == "head":
            scale = torch.exp(log_kappa)[:, None]
        elif self.kappa_source == "learned":
            scale = torch.exp(self.log_kappa.to(batch.dtype))
        else:
            scale = self.kappa
        return cross_entropy(scale * cos, labels)
