"""Retrieval metrics, all cheap functions of the split's one exact ranking pass.

Protocol: every query ranks the gallery by distance (leave-one-out when the split has no
query/gallery masks: every sample is a query against all others). The query itself is excluded
**by index** (a duplicate of it at distance 0 is a legitimate result); ties rank the lower index
first (:mod:`metrics.ranking`). **Relevant** = a gallery item with the query's label, the query
itself excluded; ``R`` denotes their number for a query and ``rank_1 < … < rank_R`` their
positions in the query's ranking, which is all any metric below needs (computed once per split).
Values are averaged over queries (per-query mean) unless stated otherwise.

* ``e_recall@k`` (Recall@k of the DML papers, = CMC@k): 1 if any of the k nearest neighbours
  (Euclidean) is relevant, else 0; averaged over **all** queries, so a query with R = 0 (a lone
  sample of its class, or a class absent from the gallery) counts as a miss, as in the study.
* ``c_recall@k``: the same ranking by cosine similarity (identical to ``e_recall`` on unit-norm
  embeddings, where one search serves both).
* ``precision@k``: relevant among the first k, divided by min(k, number of candidates) (so a
  gallery smaller than k does not cap the score); averaged over queries with R ≥ 1.
* ``r_precision``: relevant among the first R, divided by R; over queries with R ≥ 1.
* ``mAP@R`` (MAP@R, Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020):
  ``AP@R = (1/R) Σ_{r=1..R} rel(r) · P(r)``, P(r) the precision among the first r; over queries
  with R ≥ 1 (as pytorch-metric-learning, whose lone queries are left out too).
* ``mAP_c``: the **class-averaged** MAP@R: the mean over classes of the mean AP@R of the class's
  queries (with R ≥ 1). Deviation: the reference's ``mAP_c`` was a per-query AP over the first
  n_c results divided by n_c (the class size *including* the query, an off-by-one); fixing that
  gives exactly ``mAP@R``, so ``mAP_c`` now carries the class-balanced variant that the
  reference README claimed.
* ``mAP_1000``: average precision truncated at rank K = 1000,
  ``AP@K = Σ_{r≤K} rel(r)·P(r) / min(K, R)``, over queries with R ≥ 1. The reference divided by
  the class size including the query, so a perfect ranking scored (n_c − 1)/n_c.
* ``mAP_lim``: the same with K = 1023 (the reference's faiss-GPU limit, kept for comparability).
* ``mAP``: the untruncated AP, ``(1/R) Σ_h h / rank_h``, over queries with R ≥ 1 (the reference's
  ``mAP`` with its off-by-one denominator fixed; pytorch-metric-learning's
  ``mean_average_precision``). Exact at any depth, since the ranks are.
* ``mrr``: mean reciprocal rank of the first relevant item, ``1 / rank_1``, over queries with
  R ≥ 1 (pytorch-metric-learning's ``mean_reciprocal_rank``).

Scores of queries with R = 0 are undefined for everything but recall; if *no* query has R ≥ 1
the metric is NaN (there is nothing to measure), never a silent 0.

**Search depth** (the ``faiss`` backend, :mod:`metrics.faiss_search`): each metric reads only
ranks up to its own cutoff, ``search_depth``: k for ``e_recall@k``/``c_recall@k``/``precision@k``,
the largest R for ``r_precision``/``mAP@R``/``mAP_c``, 1000 / 1023 for ``mAP_1000`` / ``mAP_lim``.
``mAP`` and ``mrr`` read ranks at any depth (``exact_only``) and need the exact ranking pass.
"""

from __future__ import annotations

import torch

from metrics.context import EvalContext


def _mean_over(values: torch.Tensor, valid: torch.Tensor) -> float:
    return values[valid].double().mean().item() if bool(valid.any()) else float("nan")


def _positive_int(family: str, k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{family} needs a positive integer k, e.g. {family}@1")
    return k


def ap_from_ranks(ranks: torch.Tensor, cutoff: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """Per row: Σ_{h : rank_h ≤ cutoff} h / rank_h, divided by ``denom`` (0 where denom = 0).

    ``ranks`` (Nq, W) holds each row's sorted relevant ranks; the h-th relevant item at rank r adds
    the precision P(r) = h / r, so this is Σ_{r ≤ cutoff} rel(r)·P(r) without a per-rank array."""
    h = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    inside = ranks <= cutoff[:, None]
    total = torch.where(inside, h / ranks.double(), 0.0).sum(1)
    return total / denom.clamp_min(1)


class _Ranked:
    """Base of the rank-based metrics: ``view`` picks Euclidean or cosine ranking."""

    view = "euclidean"
    exact_only = False  # True: reads ranks at any depth, so a kNN search cannot serve it

    def ranks_needed(self, ctx: EvalContext) -> int:
        """How many leading relevant ranks per query this metric reads."""
        return ctx.max_relevant

    def search_depth(self, ctx: EvalContext) -> int:
        """The deepest rank this metric compares with (a kNN search to this depth serves it)."""
        return ctx.max_relevant


class Recall(_Ranked):
    """Recall@k (Euclidean): a relevant item among the k nearest; lone queries count as misses."""

    name = "e_recall"

    def __init__(self, *, k: int) -> None:
        self.k = _positive_int(self.name, k)

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 1

    def search_depth(self, ctx: EvalContext) -> int:
        return self.k

    def __call__(self, ctx: EvalContext) -> float:
        ranks = ctx.ranks(self.view)
        if ranks.shape[1] == 0:  # nobody has a relevant item
            return 0.0
        return (ranks[:, 0] <= self.k).double().mean().item()


class CosineRecall(Recall):
    """Recall@k with the cosine ranking."""

    name = "c_recall"
    view = "cosine"


class Precision(_Ranked):
    """Precision@k: relevant among the first k / min(k, candidates); queries with R ≥ 1."""

    name = "precision"

    def __init__(self, *, k: int) -> None:
        self.k = _positive_int(self.name, k)

    def ranks_needed(self, ctx: EvalContext) -> int:
        return self.k  # the k-th relevant item is the deepest that can rank within k

    def search_depth(self, ctx: EvalContext) -> int:
        return self.k

    def __call__(self, ctx: EvalContext) -> float:
        hits = (ctx.ranks(self.view) <= self.k).sum(1)
        denom = ctx.n_candidates.clamp(max=self.k).clamp_min(1)
        return _mean_over(hits.double() / denom, ctx.n_relevant >= 1)


class RPrecision(_Ranked):
    """R-precision: relevant among the first R, divided by R; queries with R ≥ 1."""

    name = "r_precision"

    def __call__(self, ctx: EvalContext) -> float:
        r = ctx.n_relevant
        hits = (ctx.ranks(self.view) <= r[:, None]).sum(1)
        return _mean_over(hits.double() / r.clamp_min(1), r >= 1)


class MAPatR(_Ranked):
    """MAP@R (Musgrave et al. 2020), per-query mean over queries with R ≥ 1."""

    name = "mAP@R"

    def per_query(self, ctx: EvalContext) -> torch.Tensor:
        key = f"ap_at_r_{ctx.view(self.view)}"  # shared by mAP@R and mAP_c
        if key not in ctx.__dict__:
            r = ctx.n_relevant
            ctx.__dict__[key] = ap_from_ranks(ctx.ranks(self.view), r, r)
        return ctx.__dict__[key]

    def __call__(self, ctx: EvalContext) -> float:
        return _mean_over(self.per_query(ctx), ctx.n_relevant >= 1)


class ClassMAPatR(MAPatR):
    """Class-averaged MAP@R: mean over classes of the class's mean AP@R (queries with R ≥ 1)."""

    name = "mAP_c"

    def __call__(self, ctx: EvalContext) -> float:
        valid = ctx.n_relevant >= 1
        if not bool(valid.any()):
            return float("nan")
        ap = self.per_query(ctx)[valid]
        _, cls = torch.unique(ctx.query_labels[valid], return_inverse=True)
        sums = torch.zeros(int(cls.max()) + 1, dtype=torch.float64, device=ap.device).index_add_(0, cls, ap)
        return (sums / torch.bincount(cls)).mean().item()


class MAPatK(_Ranked):
    """AP truncated at rank K, divided by min(K, R); queries with R ≥ 1."""

    name = "mAP_1000"
    cutoff = 1000

    def ranks_needed(self, ctx: EvalContext) -> int:
        return self.cutoff  # relevant items after the K-th cannot rank within K

    def search_depth(self, ctx: EvalContext) -> int:
        return self.cutoff

    def __call__(self, ctx: EvalContext) -> float:
        r = ctx.n_relevant
        cut = torch.full_like(r, self.cutoff)
        ap = ap_from_ranks(ctx.ranks(self.view)[:, : self.cutoff], cut, r.clamp(max=self.cutoff))
        return _mean_over(ap, r >= 1)


class MAPlim(MAPatK):
    """AP truncated at rank 1023 (the reference's faiss-GPU limit), divided by min(1023, R)."""

    name = "mAP_lim"
    cutoff = 1023


class MAP(_Ranked):
    """Untruncated average precision (1/R) Σ_h h / rank_h; queries with R ≥ 1."""

    name = "mAP"
    exact_only = True

    def __call__(self, ctx: EvalContext) -> float:
        r = ctx.n_relevant
        everything = torch.full_like(r, len(ctx.gallery_idx))
        return _mean_over(ap_from_ranks(ctx.ranks(self.view), everything, r), r >= 1)


class MRR(_Ranked):
    """Mean reciprocal rank of the first relevant item; queries with R ≥ 1."""

    name = "mrr"
    exact_only = True

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 1

    def __call__(self, ctx: EvalContext) -> float:
        r = ctx.n_relevant
        ranks = ctx.ranks(self.view)
        if ranks.shape[1] == 0:
            return float("nan")
        return _mean_over(1.0 / ranks[:, 0].double(), r >= 1)
