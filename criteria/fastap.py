"""FastAP: a histogram-binned average-precision surrogate.

Cakir, He, Xia, Kulis, Sclaroff. "Deep Metric Learning to Rank." CVPR 2019.
https://arxiv.org/abs/1906.05305 (the authors' code: github.com/kunhe/FastAP-metric-learning)

Each sample is a query against the rest of the batch. Squared Euclidean distances of L2-normalised
embeddings (normalised inside) lie in [0, 4]; they are soft-binned with triangular kernels on
L + 1 equally spaced centres c_l (L = ``--loss_fastap_num_bins``, 10, Δ = 4/L):
δ_l(d) = [1 − |d − c_l| / Δ]₊. For query i with positive count N⁺_i (same class, j ≠ i):

    h⁺_l = Σ_{j pos} δ_l(d_ij)    h_l = Σ_{j ≠ i} δ_l(d_ij)    H⁺_l, H_l their cumulative sums
    AP_i = 1/N⁺_i · Σ_l h⁺_l H⁺_l / H_l
    L    = mean over queries with N⁺_i > 0 of (1 − AP_i)

Equal to pytorch-metric-learning's FastAPLoss. Not part of the study.
Each distance has mass on two centres only, so the histograms are built by ``index_add``: memory
O(B² + B·L). A batch without positive pairs gives a differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn
from torch.nn.functional import normalize

from ._common import pairwise_distances, same_label_masks, zero_loss


def _soft_bins(d2: torch.Tensor, mask: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Row-wise triangular-kernel histograms (B, L+1) of the masked squared distances in [0, 4].

    Each distance has mass on its two neighbouring centres only (weights 1 − f and f), so the
    histogram is built with one ``index_add`` over B² entries instead of a (B, B, L+1) tensor.
    """
    t = d2.clamp(0.0, 4.0) * (n_bins / 4.0)
    k = t.detach().floor().clamp(max=n_bins - 1).long()
    frac = t - k
    weight = mask.to(d2.dtype)
    row = torch.arange(len(d2), device=d2.device)[:, None] * (n_bins + 1)
    hist = torch.zeros(len(d2) * (n_bins + 1), dtype=d2.dtype, device=d2.device)
    hist = hist.index_add(0, (row + k).flatten(), ((1.0 - frac) * weight).flatten())
    hist = hist.index_add(0, (row + k + 1).flatten(), (frac * weight).flatten())
    return hist.view(len(d2), n_bins + 1)


class FastAPLoss(nn.Module):
    """FastAP (Cakir et al. 2019), each sample a query against the rest of the batch."""

    name = "fastap"
    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(self, *, num_bins: Annotated[int, "number L of distance bins"] = 10) -> None:
        super().__init__()
        self.num_bins = num_bins

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids. Returns a scalar."""
        pos, neg = same_label_masks(labels.to(batch.device))
        n_pos = pos.sum(1)
        valid = n_pos > 0
        if not bool(valid.any()):
            return zero_loss(batch)
        d2 = pairwise_distances(normalize(batch, dim=1), squared=True)
        h_pos = _soft_bins(d2, pos, self.num_bins)
        h_all = h_pos + _soft_bins(d2, neg, self.num_bins)
        cum_pos, cum_all = h_pos.cumsum(1), h_all.cumsum(1)
        ap = (h_pos * cum_pos / cum_all.clamp_min(1e-12)).sum(1) / n_pos.clamp_min(1)
        return ((1.0 - ap) * valid).sum() / valid.sum()
