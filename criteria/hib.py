"""Hedged Instance Embedding (HIB): a soft contrastive loss over sampled Gaussian embeddings.

Oh, Murphy, Pan, Roth, Schroff, Gallagher. "Modeling Uncertainty with Hedged Instance
Embedding." ICLR 2019. https://arxiv.org/abs/1810.00319

Each image i is a diagonal Gaussian N(μ_i, diag σ_i²) (packed ``[μ | log σ²]``,
``--embedding_distribution gaussian``). With K reparametrised samples z_i^k = μ_i + ε_i^k·σ_i per
image, the match probability of two images is the Monte-Carlo average of a learnable sigmoid of
the sample distance:

    p_ij = 1/K² Σ_{k,l} σ(−a·‖z_i^k − z_j^l‖ + b)
    L    = ½ · mean_{(i,j) ∈ P} −log p_ij + ½ · mean_{(i,j) ∈ N} −log(1 − p_ij)
           + β · mean_i KL(N(μ_i, σ_i²) ‖ N(0, I))

P / N: all ordered pairs i ≠ j of the batch with equal / different labels (no miner).

K = ``--loss_hib_n_samples`` (8), β = ``--loss_hib_kl_weight`` (1e-4); a and b start at
``--loss_hib_init_scale`` (1.0) and ``--loss_hib_init_bias`` (0.0) and are learned in their own
optimizer group with ``--loss_hib_lr`` (1e-3, no weight decay). ε is drawn from the loss's seeded
generator (``--seed``; its state is saved with the loss), in one (K, B, D) draw per batch.

Deviations from the paper: the paper trains on sampled pairs and sums the KL of both images of a
pair; here every pair of the batch is used, the positive and the negative pairs are balanced by
averaging each set separately (half weight each; the paper balances by sampling equal numbers),
and the KL is averaged over images (one term per image, so β is per image). a is not constrained
to be positive (a negative a would make far samples match and is pushed back by the loss).
log p and log(1 − p) are log-sum-exps of log-sigmoids, so they stay finite when every sigmoid
saturates (log σ² up to ±30).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn
from torch.nn.functional import logsigmoid

from ._common import (
    GAUSSIAN,
    SeededGenerators,
    cross_distances,
    gaussian_kl_to_standard,
    same_label_masks,
    sample_gaussian,
    split_gaussian,
)


class HIBLoss(SeededGenerators, nn.Module):
    """Hedged Instance Embedding (Oh et al. 2019): soft contrastive loss on K² sample pairs + KL."""

    name = "hib"
    distribution = GAUSSIAN
    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        embed_dim: int,
        seed: int,
        n_samples: Annotated[int, "Monte-Carlo samples K per image (K² sample pairs per image pair)"] = 8,
        kl_weight: Annotated[float, "weight β of the KL to N(0, I), per image"] = 1e-4,
        init_scale: Annotated[float, "initial scale a of the match probability σ(−a·d + b)"] = 1.0,
        init_bias: Annotated[float, "initial bias b of the match probability σ(−a·d + b)"] = 0.0,
        lr: Annotated[float, "learning rate of a and b"] = 1e-3,
    ) -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"loss 'hib' needs n_samples >= 1, got {n_samples}")
        self.init_generators(seed)
        self.embed_dim, self.n_samples, self.kl_weight, self.lr = embed_dim, n_samples, kl_weight, lr
        self.init_scale, self.init_bias = init_scale, init_bias
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def param_groups(self) -> list[dict]:
        """a and b: their own learning rate, no weight decay."""
        return [{"params": [self.scale, self.bias], "lr": self.lr, "weight_decay": 0.0, "name": "hib_match"}]

    def match_log_probs(self, mean: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p_ij, log(1 − p_ij)), both (B, B), from one fresh draw of K samples per image."""
        n, k = len(mean), self.n_samples
        z = sample_gaussian(mean, log_var, k, self.generator(mean.device)).reshape(k * n, -1)
        # rows and columns are (sample, image); regroup to (image i, image j, K² sample pairs)
        d = cross_distances(z, z).reshape(k, n, k, n).permute(1, 3, 0, 2).reshape(n, n, k * k)
        logits = self.bias.to(d.dtype) - self.scale.to(d.dtype) * d
        log_k2 = 2.0 * math.log(k)
        return (
            torch.logsumexp(logsigmoid(logits), -1) - log_k2,
            torch.logsumexp(logsigmoid(-logits), -1) - log_k2,
        )

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, 2D) packed ``[μ | log σ²]``; labels: (B,). Returns a scalar."""
        mean, log_var = split_gaussian(batch, self.embed_dim)
        pos, neg = same_label_masks(labels.to(batch.device))
        log_p, log_not_p = self.match_log_probs(mean, log_var)
        zero = torch.zeros((), dtype=batch.dtype, device=batch.device)
        # each set averaged on its own (an empty set contributes 0, without a device sync)
        pos_term = -torch.where(pos, log_p, zero).sum() / pos.sum().clamp_min(1)
        neg_term = -torch.where(neg, log_not_p, zero).sum() / neg.sum().clamp_min(1)
        kl = gaussian_kl_to_standard(mean, log_var).mean()
        return 0.5 * (pos_term + neg_term) + self.kl_weight * kl
