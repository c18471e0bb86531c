"""Histogram loss.

Ustinova, Lempitsky. "Learning Deep Embeddings with Histogram Loss." NeurIPS 2016.
https://arxiv.org/abs/1611.00822

With cosine similarities s_ij of all pairs i < j of the batch, R = ``--loss_histogram_nbins`` (65)
nodes t_r = −1 + rΔ (r = 0..R−1, Δ = 2/(R−1)) and the triangular kernel
δ_{ij,r} = [1 − |s_ij − t_r| / Δ]₊, the histograms of positive (same class) and negative pairs are

    h⁺_r = Σ_{pos pairs} δ_{ij,r} / #pos        h⁻_r = Σ_{neg pairs} δ_{ij,r} / #neg

and the loss estimates the probability that a negative pair is more similar than a positive one:

    L = Σ_r h⁻_r · Σ_{q ≤ r} h⁺_q

Each s has mass on exactly two nodes, found by integer flooring (k = ⌊(s + 1)/Δ⌋, weights 1 − f and
f with f = (s + 1)/Δ − k), so both histograms always sum to 1 for any R. Equal to
pytorch-metric-learning's HistogramLoss with n_bins = R − 1.

Deviations from the reference implementation: the reference assigned bins by *float equality* in
numpy and silently dropped mass unless Δ was a power of two (70 % of the mass survived for R = 11,
the SOP setting); it also moved data between CPU and GPU on every call. Here everything is
``index_add`` on the batch's device. The embeddings are L2-normalised inside (the reference relied on
the architecture), so similarities are in [−1, 1]. No positive or no negative pair gives a
differentiable 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from ._common import cosine_logits, same_label_masks, zero_loss


def soft_histogram(values: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Triangular-kernel histogram of values in [−1, 1] on ``n_nodes`` equally spaced nodes, sum 1."""
    delta = 2.0 / (n_nodes - 1)
    pos = (values + 1.0) / delta
    k = pos.detach().floor().clamp(0, n_nodes - 2).long()
    frac = pos - k
    hist = torch.zeros(n_nodes, dtype=values.dtype, device=values.device)
    hist = hist.index_add(0, k, 1.0 - frac).index_add(0, k + 1, frac)
    return hist / len(values)


class HistogramLoss(nn.Module):
    """Histogram loss (Ustinova & Lempitsky 2016) over all pairs of the batch."""

    name = "histogram"
    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(self, *, nbins: Annotated[int, "number R of histogram nodes on [−1, 1]"] = 65) -> None:
        super().__init__()
        if nbins < 2:
            raise ValueError(f"histogram loss needs nbins >= 2, got {nbins}")
        self.nbins = nbins

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids. Returns a scalar."""
        sim = cosine_logits(batch, batch).clamp(-1.0, 1.0)
        pos, neg = same_label_masks(labels.to(batch.device))
        upper = torch.ones_like(pos).triu(1)
        pos, neg = sim[upper & pos], sim[upper & neg]
        if len(pos) == 0 or len(neg) == 0:
            return zero_loss(batch)
        h_pos = soft_histogram(pos, self.nbins)
        h_neg = soft_histogram(neg, self.nbins)
        return (h_neg * h_pos.cumsum(0)).sum()
