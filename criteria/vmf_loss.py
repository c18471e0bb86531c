"""vMF loss: a softmax over vMF-distributed class weights, for a vMF-distributed embedding.

Scott, Gallagher, Mozer. "von Mises-Fisher Loss: An Exploration of Embedding Geometries for
Supervised Learning." ICCV 2021. https://arxiv.org/abs/2103.15718

Each image i is z_i ~ vMF(μ_i, κ_i) on S^{D−1} (packed ``[μ | log κ]``,
``--embedding_distribution vmf``), and each class c has a random weight w_c ~ vMF(μ_c, κ_c), stored as
one unnormalised vector per class (μ_c = its direction, κ_c = its norm). The class posterior of a
sample is the softmax of β zᵀw_c, taken in expectation over the class weights, which has a closed
form:

    E_{w_c}[e^{β zᵀw_c}] = C_D(κ_c) / C_D(‖κ_c μ_c + β z‖),   log C_D(κ) = (D/2 − 1) log κ − (D/2) log 2π − log I_{D/2−1}(κ)

The loss is the negative expected log-likelihood of the label, bounded with Jensen's inequality in
the numerator (whose expectation over z and w_y is then exact, E[z] = A_D(κ)μ with
A_D = I_{D/2}/I_{D/2−1}) and estimated with K Monte-Carlo samples z_ik in the denominator:

    L = mean_i [ −β A_D(κ_i) A_D(κ_{y_i}) μ_iᵀμ_{y_i}
                 + (1/K) Σ_k log Σ_c C_D(κ_c) / C_D(‖κ_c μ_c + β z_ik‖) ]

As κ_i, κ_c → ∞ this is the normalised softmax cross-entropy CE(β μ_iᵀμ_c, y_i) with scale β.

Flags: K = ``--loss_vmf_n_samples`` (10); β = ``--loss_vmf_beta`` (16), learned (log-parametrised)
unless ``--loss_vmf_fixed_beta``; the class weights are initialised to random directions of norm κ₀
with A_D(κ₀) = ``--loss_vmf_init_mean_resultant`` (0.7; after the paper's dimension-equivariant
initialisation: the same expected cosine of a class weight to its mean in every dimension, so the
Bessel ratio's gradients are neither saturated nor vanishing), and trained with ``--loss_vmf_lr``
(5e-4), β in the same group, no weight decay. The samples come from Wood's rejection sampler
(criteria/_common.py ``sample_vmf``) with the loss's seeded generator (``--seed``, its state saved
with the loss), K fresh samples per image and call.

Deviations from the paper: the estimator above (closed-form Jensen numerator, Monte-Carlo
denominator) is derived from the model the paper describes; its published code was not available
to compare against, so details of its exact estimator may differ. Gradients reach κ_i through the
samples by the reparametrised term of Davidson et al. (2018) only (the rejection-correction term is
left out); on the expected cosine E[μᵀz] its relative bias measures −3 % at D = 16, −0.7 % at
D = 64 and −0.1 % at D = 512 (κ ≈ 1 to 10 per dimension); the closed-form numerator term is exact.
The samples are drawn in every call, also in eval mode (the loss is a training objective; retrieval
uses μ). Memory O(B·C) per sample (a loop over the K samples, not over the batch).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from ._common import (
    VMF,
    ClassWeightLoss,
    SeededGenerators,
    bessel_ratio,
    log_vmf_normalizer,
    sample_vmf,
    split_vmf,
)


def concentration_for(mean_resultant: float, d: int) -> float:
    """κ with A_d(κ) = ``mean_resultant`` (0 < r < 1), by bisection on log κ (A_d increases in κ)."""
    if not 0.0 < mean_resultant < 1.0:
        raise ValueError(f"a mean resultant length lies in (0, 1), got {mean_resultant}")
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        value = bessel_ratio(d, torch.tensor(math.exp(mid), dtype=torch.float64)).item()
        lo, hi = (mid, hi) if value < mean_resultant else (lo, mid)
    return math.exp(0.5 * (lo + hi))


class VMFLoss(SeededGenerators, ClassWeightLoss):
    """vMF loss (Scott et al. 2021): expected softmax over vMF class weights, K vMF samples."""

    name = "vmf"
    distribution = VMF

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        seed: int,
        lr: Annotated[float, "learning rate of the vMF-loss class weights and of beta"] = 5e-4,
        n_samples: Annotated[int, "Monte-Carlo samples K of each image's vMF per call"] = 10,
        beta: Annotated[float, "softmax scale beta (its initial value when learned)"] = 16.0,
        fixed_beta: Annotated[bool, "keep beta constant instead of learning it"] = False,
        init_mean_resultant: Annotated[
            float, "initial A_D(kappa_c) of the class weights (sets their initial norm)"
        ] = 0.7,
    ) -> None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        kappa0 = concentration_for(init_mean_resultant, embed_dim)
        table = torch.nn.functional.normalize(torch.randn(n_classes, embed_dim), dim=1) * kappa0
        super().__init__(n_classes=n_classes, embed_dim=embed_dim, lr=lr, table=table)
        self.init_generators(seed)
        self.n_samples, self.beta, self.fixed_beta = n_samples, beta, fixed_beta
        self.init_mean_resultant = init_mean_resultant
        if fixed_beta:
            self.register_buffer("log_beta", torch.tensor(math.log(beta)))
        else:
            self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if not self.fixed_beta:
            groups[0]["params"].append(self.log_beta)
        return groups

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D + 1) packed ``[μ | log κ]``; labels: (B,). Returns a scalar."""
        d = self.embed_dim
        mean, log_kappa = split_vmf(batch, d)
        labels = self.checked_labels(batch, labels)
        mean = torch.nn.functional.normalize(mean, dim=1)
        kappa = torch.exp(log_kappa)
        weights = self.class_weights.to(batch.dtype)
        class_kappa = weights.norm(dim=1).clamp_min(1e-12)
        class_mean = weights / class_kappa[:, None]
        beta = torch.exp(self.log_beta.to(batch.dtype))

        # numerator: β E[z]ᵀE[w_y] = β A_D(κ_i) A_D(κ_y) μ_iᵀμ_y, exact
        target = (mean * class_mean[labels]).sum(1)
        numerator = beta * bessel_ratio(d, kappa) * bessel_ratio(d, class_kappa)[labels] * target
        # denominator: log Σ_c C_D(κ_c)/C_D(‖κ_c μ_c + β z‖), averaged over K samples z of each image
        log_c_class = log_vmf_normalizer(d, class_kappa)
        samples = sample_vmf(mean, kappa, self.n_samples, self.generator(batch.device))
        denominator = 0.0
        for z in samples:  # (B, D) each: memory stays O(B·C)
            # ‖κ_c μ_c + β z‖² = κ_c² + β² + 2βκ_c μ_cᵀz (z and μ_c unit)
            sq = class_kappa.pow(2)[None] + beta.pow(2) + 2.0 * beta * class_kappa[None] * (z @ class_mean.T)
            log_terms = log_c_class[None] - log_vmf_normalizer(d, sq.clamp_min(1e-24).sqrt())
            denominator = denominator + torch.logsumexp(log_terms, dim=1)
        return (denominator / self.n_samples - numerator).mean()
