"""DSML: directional-statistics metric learning with periodically re-estimated vMF class centres.

Zhe, Chen, Yan. "Directional Statistics-based Deep Metric Learning for Image Classification and
Retrieval." Pattern Recognition 93, 2019. https://arxiv.org/abs/1802.09662

Every class c is a vMF distribution vMF(m_c, κ) on S^{D−1} with its own mean direction m_c and one
concentration κ shared by all classes; an L2-normalised embedding x̂_i is scored by the posterior of
its class under the equal-prior mixture (the normalisers C_D(κ) cancel):

    L = mean_i −log [ e^{κ m_{y_i}ᵀx̂_i} / Σ_c e^{κ m_cᵀx̂_i} ]

The centres are not trained by gradient descent but re-estimated, which is the paper's point (a
global view of the embedding space instead of the few samples of a batch): they are the vMF maximum
likelihood estimates m_c = Σ_{i∈c} x̂_i / ‖Σ_{i∈c} x̂_i‖, recomputed every
``--loss_dsml_update_every`` (100) training iterations from the (detached) embeddings seen since the
last update; a class never seen keeps its centre. κ = ``--loss_dsml_kappa`` (16), a constant.

Distribution: the embeddings are points (``dirac``): the vMF distributions are the classes', not
the images' (a ``vmf`` head's concentration would receive no gradient).

Deviations from the paper: the paper re-estimates the centres with a pass of the current network
over the whole training set; here they come from the embeddings of the training batches of the last
period (no extra pass, the network moving during the period), and a class's centre is set from the
first batch it appears in, so training does not start against random centres (those of unseen
classes are random unit vectors until then). Updates happen in training mode only. Memory O(B·C).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from ._common import DIRAC, check_labels


class DSMLLoss(nn.Module):
    """DSML (Zhe et al. 2019): vMF mixture posterior with periodically re-estimated class centres."""

    name = "dsml"
    distribution = DIRAC
    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        kappa: Annotated[float, "concentration kappa shared by the class vMF distributions"] = 16.0,
        update_every: Annotated[int, "training iterations between re-estimates of the class centres"] = 100,
    ) -> None:
        super().__init__()
        if kappa <= 0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        if update_every < 1:
            raise ValueError(f"update_every must be at least 1, got {update_every}")
        self.n_classes, self.embed_dim = n_classes, embed_dim
        self.kappa, self.update_every = kappa, update_every
        self.register_buffer("centres", nn.functional.normalize(torch.randn(n_classes, embed_dim), dim=1))
        self.register_buffer("sums", torch.zeros(n_classes, embed_dim))  # Σ x̂ of the current period
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate one training batch of unit embeddings (B, D); every ``update_every`` calls,
        replace the centres of the classes seen in the period by their normalised sums."""
        batch_sums = torch.zeros_like(self.sums).index_add_(0, labels, embeddings.to(self.sums.dtype))
        first = torch.zeros_like(self.seen)
        first[labels] = True
        first &= ~self.seen  # classes met for the first time: their centre starts from this batch
        self.centres[first] = nn.functional.normalize(batch_sums[first], dim=1)
        self.seen |= first
        self.sums += batch_sums
        self.step += 1
        if int(self.step) % self.update_every == 0:
            present = self.sums.norm(dim=1) > 0
            self.centres[present] = nn.functional.normalize(self.sums[present], dim=1)
            self.sums.zero_()

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        check_labels(labels, self.n_classes, self.name)
        labels = labels.to(batch.device)
        x = nn.functional.normalize(batch, dim=1)
        if self.training:  # before the centres enter the graph (they are updated in place)
            self.observe(x.detach(), labels)
        logits = self.kappa * x @ self.centres.to(batch.dtype).T
        return cross_entropy(logits, labels)
