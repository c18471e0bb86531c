"""Clustering metrics on one seeded k-means with k = the number of classes of the split.

* ``nmi``: normalised mutual information between cluster assignment and labels, with the
  *arithmetic* mean normaliser pinned (scikit-learn changed its default in 0.22, which made the
  reference's values version-dependent).
* ``f1``: the pair-counting F-measure of the lifted-structure evaluation (Song et al. 2016):
  over all pairs of samples, precision = pairs in one cluster that share a class / pairs in one
  cluster, recall = pairs that share a class and a cluster / pairs that share a class;
  F1 = 2PR/(P+R). Computed from the contingency table, no loop over samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from metrics.context import EvalContext


def _pairs(n: np.ndarray) -> float:
    n = np.asarray(n, dtype=np.float64)
    return float((n * (n - 1) / 2).sum())


def pair_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    table = contingency_matrix(labels, clusters, sparse=True)
    tp = _pairs(table.data)
    same_cluster = _pairs(np.asarray(table.sum(0)).ravel())
    same_class = _pairs(np.asarray(table.sum(1)).ravel())
    if tp == 0:
        return 0.0
    precision, recall = tp / same_cluster, tp / same_class
    return 2 * precision * recall / (precision + recall)


class NMI:
    """Normalised mutual information (arithmetic normaliser) of k-means vs labels."""

    name = "nmi"

    def __init__(self, param: str | None) -> None:
        if param is not None:
            raise ValueError("nmi takes no parameter")

    def k_needed(self, ctx: EvalContext) -> int:
        return 0

    def __call__(self, ctx: EvalContext) -> float:
        return float(normalized_mutual_info_score(ctx.labels.numpy(), ctx.cluster_labels, average_method="arithmetic"))


class F1:
    """Pair-counting F1 of k-means vs labels."""

    name = "f1"

    def __init__(self, param: str | None) -> None:
        if param is not None:
            raise ValueError("f1 takes no parameter")

    def k_needed(self, ctx: EvalContext) -> int:
        return 0

    def __call__(self, ctx: EvalContext) -> float:
        return pair_f1(ctx.labels.numpy(), ctx.cluster_labels)
