"""Distance-histogram batch matching: the candidate batch whose statistics best match a big batch.

Roth et al., ICML 2020, §4 ("batch matching" samplers). https://arxiv.org/abs/2002.08473

Per batch: a class-structured big batch B (``--data_batchmatch_bigbs`` / K distinct random classes
× K = samples_per_class images, see ``storage.py``) and ``--data_batchmatch_ncomps`` (10) candidate
batches b, each made of bs / K of B's class groups drawn without replacement (the scaffold shared
with ``fid_batchmatch``, see ``_batchmatch.py``). With the memory embeddings, the chosen candidate
minimises

    ‖μ_B − μ_b‖ + ‖σ_B − σ_b‖ + 75 · W₁(h_B, h_b)

where μ, σ are the per-dimension mean and standard deviation and h the distribution of pairwise
distances, histogrammed in 50 bins over [min, max] of B's distances (candidate distances are
within that range); W₁ between two histograms on the same bins is bin width · Σ |CDF_B − CDF_b|.

Deviations from the reference implementation: W₁ compares the two distance distributions (the
reference passed the histogram *heights* to ``scipy.stats.wasserstein_distance`` as if they were
samples, ignoring the bin positions; it also summed both directions, i.e. 2·W₁ of its inputs);
all candidates are scored at once in torch; seeded, no joblib.
"""

from __future__ import annotations

import torch

from datasampler._batchmatch import BatchMatchSampler
from datasampler.storage import squared_distances

N_BINS = 50
W1_WEIGHT = 75.0


def pairwise_upper(x: torch.Tensor) -> torch.Tensor:
    """Distances of all pairs i < j of the rows of x (..., n, D) -> (..., n(n−1)/2)."""
    n = x.shape[-2]
    iu = torch.triu_indices(n, n, offset=1)
    return squared_distances(x)[..., iu[0], iu[1]].sqrt()


def histograms(d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Normalised histograms (..., n_bins) of the last axis of ``d`` over [lo, hi]."""
    width = (hi - lo).clamp_min(1e-12) / n_bins
    bins = ((d - lo) / width).floor().long().clamp(0, n_bins - 1)
    # counts of ones: exact integers in any summation order, so repeated bins are deterministic
    h = torch.zeros(*d.shape[:-1], n_bins, dtype=d.dtype).scatter_add_(-1, bins, torch.ones_like(d))
    return h / h.sum(-1, keepdim=True)


class DisthistBatchmatchSampler(BatchMatchSampler):
    """Candidate batch closest to the big batch in mean, std and distance histogram."""

    name = "disthist_batchmatch"

    def cost(self, x_big: torch.Tensor, x_cand: torch.Tensor) -> torch.Tensor:
        d_big, d_cand = pairwise_upper(x_big), pairwise_upper(x_cand)
        lo, hi = d_big.min(), d_big.max()
        h_big = histograms(d_big, lo, hi, N_BINS)
        h_cand = histograms(d_cand, lo, hi, N_BINS)
        w1 = (hi - lo) / N_BINS * (h_big.cumsum(-1) - h_cand.cumsum(-1)).abs().sum(-1)
        mean = (x_big.mean(0) - x_cand.mean(1)).norm(dim=-1)
        std = (x_big.std(0) - x_cand.std(1)).norm(dim=-1)
        return mean + std + W1_WEIGHT * w1
