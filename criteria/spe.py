"""Stochastic Prototype Embeddings (SPE): Gaussian class prototypes, sampled queries.

Scott, Ridgeway, Mozer. "Stochastic Prototype Embeddings." arXiv 2019.
https://arxiv.org/abs/1909.11702

Each image i is a diagonal Gaussian N(μ_i, diag σ_i²) (packed ``[μ | log σ²]``,
``--embedding_distribution gaussian``). Instances of a class scatter around the class prototype ρ_c
with a learned isotropic spread σ_ε²; a support image j of class c therefore tells
ρ_c ~ N(μ_j, σ_j² + σ_ε²), and the prototype's posterior (flat prior) is the product over the
support S_c, a precision-weighted mean:

    Λ_c = Σ_{j ∈ S_c} 1/(σ_j² + σ_ε²)         m_c = Λ_c⁻¹ Σ_{j ∈ S_c} μ_j/(σ_j² + σ_ε²)
    p(z | c) = N(z; m_c, Λ_c⁻¹ + σ_ε²)         (per dimension)

A query is classified by marginalising the softmax over its embedding's uncertainty, with K
reparametrised samples z_i^k = μ_i + ε_i^k·σ_i:

    p(y_i | x_i) ≈ 1/K Σ_k softmax_c( log p(z_i^k | c) )_{y_i}        L = −mean_i log p(y_i | x_i)

Support and query within one batch (no miner), leave-one-out per class: every image is a query;
the prototype of its own class is formed from the *other* images of that class, the prototypes of
the other classes from all their images; the softmax runs over the classes present in the batch.
Images without another image of their class are supports only; a batch without any query gives a
differentiable 0.

K = ``--loss_spe_n_samples`` (8). log σ_ε² starts at ``--loss_spe_init_log_spread`` (−2) and is
learned in its own optimizer group with ``--loss_spe_lr`` (1e-3, no weight decay). ε is drawn
from the loss's seeded generator (``--seed``; its state is saved with the loss), one (K, B, D)
draw per batch. As all σ_i² → 0 the loss is a leave-one-out prototypical-network loss with
squared distances scaled by 1/(σ_ε²(1 + 1/n_c)).

Deviations from the paper: the paper samples separate support and query sets per episode and uses
an intersection sampler to evaluate the prototype integral; here one batch provides both, and the
integral over the query's embedding is plain Monte Carlo (the paper's naive sampler). The spread
σ_ε² keeps every precision below 1/σ_ε², so value and gradients stay finite for log σ² in
[−30, 30]. Memory O(K·B·C_b·D) for C_b classes in the batch.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from ._common import (
    GAUSSIAN,
    SeededGenerators,
    gaussian_log_density,
    same_label_masks,
    sample_gaussian,
    split_gaussian,
)


class SPELoss(SeededGenerators, nn.Module):
    """Stochastic Prototype Embeddings (Scott et al. 2019), leave-one-out within the batch."""

    name = "spe"
    distribution = GAUSSIAN
    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        embed_dim: int,
        seed: int,
        n_samples: Annotated[int, "Monte-Carlo samples K of each query"] = 8,
        init_log_spread: Annotated[float, "initial log σ_ε² (class spread around its prototype)"] = -2.0,
        lr: Annotated[float, "learning rate of log σ_ε²"] = 1e-3,
    ) -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"loss 'spe' needs n_samples >= 1, got {n_samples}")
        self.init_generators(seed)
        self.embed_dim, self.n_samples, self.lr = embed_dim, n_samples, lr
        self.init_log_spread = init_log_spread
        self.log_spread = nn.Parameter(torch.tensor(float(init_log_spread)))

    def param_groups(self) -> list[dict]:
        """log σ_ε²: its own learning rate, no weight decay."""
        return [{"params": [self.log_spread], "lr": self.lr, "weight_decay": 0.0, "name": "spe_spread"}]

    def prototypes(
        self, mean: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query i and batch class c: prototype mean m_ic and log-variance log(Λ_ic⁻¹ + σ_ε²),
        both (B, C_b, D); the (B, C_b) bool mask of each query's own class; the (B,) queries that
        have another image of their class."""
        log_spread = self.log_spread.to(mean.dtype)
        precision = torch.exp(-torch.logaddexp(log_var, log_spread))  # 1/(σ_j² + σ_ε²) ≤ 1/σ_ε²
        classes, inverse = torch.unique(labels, return_inverse=True)
        members = inverse[None, :] == torch.arange(len(classes), device=labels.device)[:, None]  # (C_b, B)
        others, _ = same_label_masks(labels)  # leave-one-out: the own class without the query
        # sums by matrix products (no subtraction of the query's share: no cancellation)
        support = torch.cat([precision, precision * mean], dim=1)
        by_class = members.to(mean.dtype) @ support  # (C_b, 2D)
        own_class = others.to(mean.dtype) @ support  # (B, 2D)
        own = members.T  # (B, C_b)
        sums = torch.where(own[:, :, None], own_class[:, None, :], by_class[None, :, :])
        weight, weighted_mean = sums.split(self.embed_dim, dim=2)
        valid = others.any(1)
        weight = torch.where(valid[:, None, None], weight, torch.ones_like(weight))  # queries left out below
        proto_mean = weighted_mean / weight
        proto_log_var = torch.logaddexp(-torch.log(weight), log_spread)
        return proto_mean, proto_log_var, own, valid

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, 2D) packed ``[μ | log σ²]``; labels: (B,). Returns a scalar."""
        mean, log_var = split_gaussian(batch, self.embed_dim)
        labels = labels.to(batch.device)
        proto_mean, proto_log_var, own, valid = self.prototypes(mean, log_var, labels)
        z = sample_gaussian(mean, log_var, self.n_samples, self.generator(batch.device))  # (K, B, D)
        log_lik = gaussian_log_density(z[:, :, None, :], proto_mean, proto_log_var)  # (K, B, C_b)
        log_post = torch.log_softmax(log_lik, dim=2).masked_fill(~own, 0.0).sum(2)  # (K, B): own class
        log_p = torch.logsumexp(log_post, dim=0) - math.log(self.n_samples)
        zero = torch.zeros((), dtype=batch.dtype, device=batch.device)
        return -torch.where(valid, log_p, zero).sum() / valid.sum().clamp_min(1)
