"""Embedding-space density statistics of the study (π_intra, π_inter, π_ratio), cosine distance.

Distances are cosine distances d(a, b) = 1 − cos(a, b) between L2-normalised embeddings (a zero
vector has cosine 0 to everything). All samples of the split are used.

* ``dists@intra``: for every class c with n_c ≥ 2, the mean distance over its n_c(n_c − 1)
  ordered pairs of distinct members; then the mean over those classes. Singleton classes have no
  pair and are left out (the reference produced NaN for them and then replaced it through an
  indexing bug with an arbitrary value). NaN if no class has two members.
* ``dists@inter``: class centres μ_c = normalise(mean of the normalised members); the mean
  distance over the C(C − 1) ordered pairs of distinct centres. NaN if C < 2.
* ``dists@intra_over_inter``: intra / max(inter, 1e-8) (the reference's guard), from the same
  two values (computed once, not three times).

Everything follows from per-class sums S_c = Σ z_i in O(N·D), without an N×N or C×C matrix:
Σ_{i≠j∈c} z_i·z_j = |S_c|² − Σ_{i∈c} |z_i|², and likewise over the centres.
"""

from __future__ import annotations

import torch

from metrics.context import EvalContext

MODES = ("intra", "inter", "intra_over_inter")


def intra_inter(counts: torch.Tensor, sums: torch.Tensor, sq_norms: torch.Tensor) -> tuple[float, float]:
    """(intra, inter) from class sizes, sums of normalised members and sums of their |z|²."""
    counts = counts.double()
    multi = counts >= 2
    if bool(multi.any()):
        n = counts[multi]
        dot = (sums[multi].pow(2).sum(1) - sq_norms[multi]) / (n * (n - 1))
        intra = (1.0 - dot).mean().item()
    else:
        intra = float("nan")
    if len(counts) >= 2:
        mu = torch.nn.functional.normalize(sums, dim=1)
        c = len(mu)
        dot = (mu.sum(0).pow(2).sum() - mu.pow(2).sum()) / (c * (c - 1))
        inter = (1.0 - dot).item()
    else:
        inter = float("nan")
    return intra, inter


class Dists:
    """Mean intra-class / inter-class cosine distance and their ratio."""

    name = "dists"

    def __init__(self, *, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"dists needs one of @{', @'.join(MODES)}")
        self.mode = mode

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 0

    def __call__(self, ctx: EvalContext) -> float:
        counts, sums, sq_norms = ctx.class_stats
        intra, inter = intra_inter(counts, sums, sq_norms)
        if self.mode == "intra":
            return intra
        if self.mode == "inter":
            return inter
        return intra / max(inter, 1e-8)
