"""Probabilistic Face Embeddings (PFE): the mutual likelihood score of genuine pairs.

Shi, Jain. "Probabilistic Face Embeddings." ICCV 2019. https://arxiv.org/abs/1904.09658

Each image i is a diagonal Gaussian N(μ_i, diag σ_i²) (packed ``[μ | log σ²]``,
``--embedding_distribution gaussian``). The mutual likelihood score of two images is the log
density of μ_i − μ_j under N(0, σ_i² + σ_j²), i.e. the log-likelihood that both are noisy
observations of the same latent code:

    MLS(i, j) = −½ Σ_d [ (μ_id − μ_jd)² / (σ_id² + σ_jd²) + log(σ_id² + σ_jd²) ] − (D/2) log 2π
    L = −mean_{(i,j) ∈ P} MLS(i, j)

P: the pairs i < j of the batch with equal labels (the genuine pairs; no miner). With equal tiny
variances σ², MLS = −‖μ_i − μ_j‖²/(4σ²) − (D/2) log(4πσ²): an affine function of the squared
distance. No flags.

PFE learns only the uncertainty, on a network whose mean is already trained: the class declares
``frozen_mean = True`` (the architecture freezes its backbone and mean head) and the loss detaches
μ as well, so only log σ² receives gradients even when it is used on its own.

Deviations from the paper: σ² is per dimension, as in the paper, from the packed log σ² (the
paper's uncertainty module predicts it the same way); μ is used as the network emits it (the
paper's face features are L2-normalised: the architecture's normalisation decides). The loss
averages over the genuine pairs of the batch rather than a separate pair sampler; a batch without
one gives a differentiable 0. log(σ_i² + σ_j²) is computed as logaddexp of the log-variances, so
value and gradients stay finite for log σ² in [−30, 30].
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import GAUSSIAN, gaussian_log_density, same_label_masks, split_gaussian


def mutual_likelihood_score(
    mean_a: torch.Tensor, log_var_a: torch.Tensor, mean_b: torch.Tensor, log_var_b: torch.Tensor
) -> torch.Tensor:
    """MLS of matching rows (P, D) -> (P,): log N(μ_a − μ_b; 0, σ_a² + σ_b²)."""
    return gaussian_log_density(mean_a, mean_b, torch.logaddexp(log_var_a, log_var_b))


class PFELoss(nn.Module):
    """Probabilistic Face Embeddings (Shi & Jain 2019): −mean MLS of the genuine pairs, μ frozen."""

    name = "pfe"
    distribution = GAUSSIAN
    frozen_mean = True
    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(self, *, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, 2D) packed ``[μ | log σ²]``; labels: (B,). Returns a scalar."""
        mean, log_var = split_gaussian(batch, self.embed_dim)
        mean = mean.detach()  # PFE trains the uncertainty only
        pos, _ = same_label_masks(labels.to(batch.device))
        i, j = torch.nonzero(torch.triu(pos, diagonal=1), as_tuple=True)
        mls = mutual_likelihood_score(mean[i], log_var[i], mean[j], log_var[j])
        # an empty set of pairs sums to a 0 that is still connected to log σ²
        return -mls.sum() / max(len(i), 1)
