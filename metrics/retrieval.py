"""Leave-one-out retrieval metrics: Recall@k and MAP@R.

Every sample of the split is a query against all *other* samples (the query is excluded by
index). Relevant = same class label.

* ``e_recall@k``: the fraction of queries with at least one relevant item among their k nearest
  neighbours (Euclidean). Queries whose class has no other sample count as misses (the standard
  definition, as in the study).
* ``mAP@R`` (MAP@R, Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020): for a
  query with R relevant items (R = class size − 1),
  ``AP@R = 1/R · Σ_{r=1..R} P(r) · rel(r)`` over its R nearest neighbours, P(r) the precision
  among the first r; averaged over the queries with R ≥ 1 (a lone query has no relevant item and is
  left out, as in pytorch-metric-learning).
"""

from __future__ import annotations

import torch

from metrics.context import EvalContext


class Recall:
    """Recall@k (leave-one-out, Euclidean)."""

    name = "e_recall"

    def __init__(self, param: str | None) -> None:
        if param is None or not param.isdigit() or int(param) < 1:
            raise ValueError("e_recall needs a positive integer k, e.g. e_recall@1")
        self.k = int(param)

    def k_needed(self, ctx: EvalContext) -> int:
        return self.k

    def __call__(self, ctx: EvalContext) -> float:
        hits = ctx.neighbour_labels[:, : self.k] == ctx.labels[:, None]
        return hits.any(1).double().mean().item()


class MAPatR:
    """MAP@R (Musgrave et al. 2020)."""

    name = "mAP@R"

    def __init__(self, param: str | None) -> None:
        if param is not None:
            raise ValueError("mAP@R takes no parameter")

    def k_needed(self, ctx: EvalContext) -> int:
        return int(ctx.class_counts.max()) - 1

    def __call__(self, ctx: EvalContext) -> float:
        r = ctx.class_counts - 1  # relevant items per query
        k = ctx.neighbour_labels.shape[1]
        rel = (ctx.neighbour_labels == ctx.labels[:, None]).double()
        rank = torch.arange(1, k + 1, dtype=torch.double)
        within_r = rank[None, :] <= r[:, None]
        precision = rel.cumsum(1) / rank
        ap = (precision * rel * within_r).sum(1) / r.clamp_min(1)
        valid = r >= 1
        return ap[valid].mean().item() if valid.any() else float("nan")
