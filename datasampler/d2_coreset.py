"""D²-coreset batches from the embedding memory (a k-means++-style seeding weighted by density).

Arthur, Vassilvitskii. "k-means++: The Advantages of Careful Seeding." SODA 2007 (D² sampling);
used with a density term as a batch sampler by Roth et al., ICML 2020, §4.

Per batch, from a random big batch X of ``--data_batchmatch_bigbs`` memory embeddings (see
``storage.py``): fit a Gaussian N(μ, Σ) to X, start at the point of X nearest to a draw from it,
then draw each further point x among the remaining ones with

    p(x) ∝ N(x; μ, Σ) · ( Σ_{s ∈ S} ‖x − s‖² )^λ,     λ = ``--data_d2_coreset_lambda`` (1.0)

(computed in log space), until P = bs / samples_per_class images are selected; each is completed
with samples_per_class − 1 random other images of its class.

Deviations from the reference implementation: Σ is shrunk towards a scaled identity,
Σ̂ = 0.9 Σ + 0.1 · tr(Σ)/D · I (a 128-D covariance from 512 samples is near-singular, and the
reference's ``multivariate_normal`` could throw); the right index mapping; a class is picked at
most once per batch while the big batch has unused classes; seeded torch code, no joblib; its name
is ``d2_coreset`` (the reference's object called itself ``greedy_coreset_sampler``).
"""

from __future__ import annotations

from typing import Annotated

import torch

from datasampler.base import Labels
from datasampler.storage import (
    BigBs,
    CoresetSampler,
    LowprojDim,
    NoUpdate,
    PickFn,
    squared_distances,
)
from utilities.registry import Flag

SHRINKAGE = 0.1


def gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of the shrunk covariance of the rows of ``x`` (float64)."""
    x = x.double()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / max(1, len(x) - 1)
    d = cov.shape[0]
    scale = (cov.trace() / d).clamp_min(1e-12)
    cov = (1.0 - SHRINKAGE) * cov + SHRINKAGE * scale * torch.eye(d, dtype=x.dtype)
    return mu, torch.linalg.cholesky(cov)


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, LLᵀ) up to the constant −D/2 · log 2π, for every row of ``x``."""
    z = torch.linalg.solve_triangular(chol, (x.double() - mu).T, upper=False)
    return -0.5 * z.pow(2).sum(0) - chol.diagonal().log().sum()


class D2CoresetSampler(CoresetSampler):
    """Density-weighted D² sampling of bs/spc classes from a random big batch of the memory."""

    name = "d2_coreset"

    def __init__(
        self,
        *,
        labels: Labels,
        bs: int,
        samples_per_class: int,
        seed: int,
        bigbs: BigBs = 512,
        no_update: NoUpdate = False,
        lowproj_dim: LowprojDim = -1,
        lam: Annotated[float, Flag("exponent λ of the D² term", name="data_d2_coreset_lambda")] = 1.0,
    ) -> None:
        super().__init__(
            labels=labels,
            bs=bs,
            samples_per_class=samples_per_class,
            seed=seed,
            bigbs=bigbs,
            no_update=no_update,
            lowproj_dim=lowproj_dim,
        )
        self.lam = lam

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, PickFn]:
        dist = squared_distances(x).double()
        mu, chol = gaussian_fit(x)
        log_density = gaussian_log_density(x, mu, chol)
        draw = mu + chol @ torch.randn(len(mu), generator=self.generator, dtype=torch.float64)
        first = (x.double() - draw).pow(2).sum(1).argmin()
        sum_sq = dist[:, first].clone()

        def next_pick(available: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
            if last is not first:
                sum_sq.add_(dist[:, last])
            logits = log_density + self.lam * sum_sq.clamp_min(1e-300).log()
            logits = logits.masked_fill(~available, float("-inf"))
            return torch.multinomial(torch.softmax(logits, 0), 1, generator=self.generator)[0]

        return first, next_pick
