"""Uncertainty metrics: how well per-item confidence predicts retrieval quality.

Karpukhin, Dereka & Kolesnikov, "Probabilistic Embeddings Revisited" (arXiv:2202.06768):
a probabilistic embedding (or a deterministic one, through its norm before normalisation) gives
each query a confidence c_q, higher = more confident. These metrics need that confidence
(``metrics.compute(..., confidence=...)``; without it they raise ValueError). Under the
query/gallery protocol they read the **queries'** confidence; ``confidence_hist`` reads every sample
of the split. Per-query quality comes from the same ranking pass as the retrieval metrics (see
:mod:`metrics.retrieval`), so it matches ``e_recall@k`` / ``mAP@R`` query by query.

Only queries with R ≥ 1 (at least one relevant gallery item) take part, as in the paper's code:
a lone query's error says nothing about its confidence (``e_recall@k`` counts it as a miss; here it
is left out). NaN if no query has R ≥ 1.

* ``erc_recall@k``, ``erc_mAP@R`` (lower is better): the area under the error-versus-reject curve.
  Sort the n queries by confidence, descending (equal confidences: lower query index first, so the
  value is deterministic; the paper's unstable argsort left that open); reject the least confident
  n − k of them and measure the error of the k kept, ``err_k = 1 − mean quality of the first k``
  (quality: the hit ``rank_1 ≤ k`` of Recall@k, or AP@R); the area is the mean over the n kept-set
  sizes, ``ERC = (1/n) Σ_{k=1..n} err_k``: error(r) on the uniform grid of rejection fractions
  r = 0, 1/n, …, (n − 1)/n (a left Riemann sum of ∫₀¹ error(r) dr), the paper's definition.
  A confidence that sorts every error last gives the minimum, a random one about 1 − quality.
* ``confidence_accuracy``: how well a threshold on confidence predicts whether the query's
  Recall@1 is a hit: the best accuracy over all thresholds t (predict "hit" iff c_q ≥ t, t from
  +inf, i.e. "no hit" for all, down to the smallest confidence), the paper code's "confidence
  accuracy". The threshold is tuned on the evaluated split itself, as in the paper.
* ``confidence_hist`` (an array): the histogram of the split's confidences, :data:`HIST_BINS` equal
  bins from the smallest to the largest value (the last bin includes its right edge, as
  ``numpy.histogram``; all values equal: one bin of width 1 centred on them). Returned flat, as
  the other array metrics: the HIST_BINS + 1 bin edges followed by the HIST_BINS counts.

Everything is one sort and one cumulative sum over the queries.
"""

from __future__ import annotations

import torch

from metrics.context import EvalContext
from metrics.retrieval import MAPatR, Recall
from metrics.spectrum import ArrayResult

HIST_BINS = 20


def erc_area(errors: torch.Tensor, confidence: torch.Tensor) -> float:
    """Area under the error-versus-reject curve: (1/n) Σ_k mean error of the k most confident.

    ``errors`` and ``confidence`` (n,); equal confidences keep their given order."""
    if len(errors) == 0:
        return float("nan")
    order = torch.sort(confidence, descending=True, stable=True).indices
    kept = torch.arange(1, len(errors) + 1, device=errors.device, dtype=torch.float64)
    return (errors.double()[order].cumsum(0) / kept).mean().item()


def best_threshold_accuracy(hit: torch.Tensor, confidence: torch.Tensor) -> float:
    """max over thresholds t of the accuracy of predicting ``hit`` by ``confidence ≥ t``."""
    n = len(hit)
    if n == 0:
        return float("nan")
    conf, order = torch.sort(confidence, descending=True, stable=True)
    hits = hit.long()[order].cumsum(0)  # true "hit" predictions among the first k
    # a threshold can only fall between distinct values: the last position of each run of ties
    last = torch.ones(n, dtype=torch.bool, device=conf.device)
    last[:-1] = conf[1:] != conf[:-1]
    k = torch.arange(1, n + 1, device=conf.device)
    misses = n - int(hits[-1])
    correct = hits + (misses - (k - hits))  # hits predicted as hits + misses predicted as misses
    return max(misses, int(correct[last].max())) / n


class _NeedsConfidence:
    needs_confidence = True


class ERCRecall(_NeedsConfidence, Recall):
    """Area under the error-versus-reject curve of Recall@k (lower is better)."""

    name = "erc_recall"

    def __call__(self, ctx: EvalContext) -> float:
        valid = ctx.n_relevant >= 1
        ranks = ctx.ranks(self.view)
        if ranks.shape[1] == 0:
            return float("nan")
        hit = ranks[:, 0] <= self.k
        return erc_area((~hit[valid]).double(), ctx.query_confidence[valid])


class ERCMAPatR(_NeedsConfidence, MAPatR):
    """Area under the error-versus-reject curve of AP@R (lower is better)."""

    name = "erc_mAP@R"

    def __call__(self, ctx: EvalContext) -> float:
        valid = ctx.n_relevant >= 1
        ap = self.per_query(ctx)
        return erc_area(1.0 - ap[valid], ctx.query_confidence[valid])


class ConfidenceAccuracy(_NeedsConfidence, Recall):
    """Best-threshold accuracy of predicting a Recall@1 hit from the query's confidence."""

    name = "confidence_accuracy"

    def __init__(self) -> None:
        super().__init__(k=1)

    def __call__(self, ctx: EvalContext) -> float:
        valid = ctx.n_relevant >= 1
        ranks = ctx.ranks(self.view)
        if ranks.shape[1] == 0:
            return float("nan")
        return best_threshold_accuracy(ranks[valid, 0] <= 1, ctx.query_confidence[valid])


def histogram(values: torch.Tensor, bins: int = HIST_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(edges (bins + 1,), counts (bins,)) of ``bins`` equal bins from min to max (float64)."""
    v = values.double()
    lo, hi = v.min(), v.max()
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(float(lo), float(hi), bins + 1, dtype=torch.float64, device=v.device)
    # bin i holds edges[i] <= v < edges[i+1]; the maximum falls into the last bin
    idx = torch.bucketize(v, edges[1:-1], right=True)
    return edges, torch.bincount(idx, minlength=bins).double()


class ConfidenceHist(_NeedsConfidence):
    """Histogram of the split's confidences: bin edges then counts, one flat array."""

    name = "confidence_hist"
    returns_array = True

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 0

    def __call__(self, ctx: EvalContext) -> ArrayResult:
        edges, counts = histogram(ctx.require_confidence())
        return ArrayResult(torch.cat([edges, counts]).tolist())
