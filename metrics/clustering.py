"""Clustering metrics on one seeded k-means with k = the number of classes of the split.

All use every sample of the split (queries and gallery) and the cluster assignment computed once
in the :class:`~metrics.context.EvalContext` (``c_*``: spherical k-means on L2-normalised rows).

* ``nmi`` / ``c_nmi``: normalised mutual information I(Y; K) / ((H(Y) + H(K)) / 2), natural
  logarithms, computed here from the contingency table. The *arithmetic* normaliser is fixed:
  scikit-learn switched its default from geometric to arithmetic in 0.22, which made the
  reference's values version-dependent. Both partitions trivial (one class, one cluster) → 1.
* ``ami``: adjusted mutual information (arithmetic normaliser, scikit-learn's
  ``adjusted_mutual_info_score``; its expected-MI term is O(C·K·N) and slow at SOP scale).
* ``f1`` / ``c_f1``: the pair-counting F-measure of the lifted-structure evaluation (Song et al.
  2016): over all unordered pairs of samples, P = pairs sharing class and cluster / pairs sharing
  a cluster, R = pairs sharing class and cluster / pairs sharing a class, F1 = 2PR/(P+R); 0 when
  no pair shares both. Computed from the contingency table (no loop over samples; the reference's
  relabelling by the member nearest the centroid does not change pair counts and is dropped).
"""

from __future__ import annotations

import numpy as np

from metrics.context import EvalContext


def contingency(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells n_ij, class sizes a_i and cluster sizes b_j (int64)."""
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    cells = np.unique(y.astype(np.int64) * (int(c.max()) + 1) + c, return_counts=True)[1]
    return cells, np.bincount(y), np.bincount(c)


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """NMI with the arithmetic-mean normaliser."""
    cells, a, b = contingency(labels, clusters)
    n = float(a.sum())

    def entropy(counts: np.ndarray) -> float:
        p = counts / n
        return float(-(p * np.log(p)).sum())

    h_y, h_k = entropy(a), entropy(b)
    if h_y == 0.0 and h_k == 0.0:
        return 1.0
    # I = Σ_ij n_ij/n · log(n · n_ij / (a_i b_j)); the cells are listed without their (i, j), so
    # use I = H(Y) + H(K) − H(Y, K)
    mi = h_y + h_k - entropy(cells)
    return float(max(mi, 0.0) / ((h_y + h_k) / 2))


def _pairs(n: np.ndarray) -> float:
    n = np.asarray(n, dtype=np.float64)
    return float((n * (n - 1) / 2).sum())


def pair_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Pair-counting F1 between a clustering and the ground-truth classes."""
    cells, a, b = contingency(labels, clusters)
    tp = _pairs(cells)
    if tp == 0:
        return 0.0
    precision, recall = tp / _pairs(b), tp / _pairs(a)
    return 2 * precision * recall / (precision + recall)


class _Clustered:
    view = "euclidean"

    def __init__(self, param: str | None) -> None:
        if param is not None:
            raise ValueError(f"{self.name} takes no parameter")

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 0

    def _inputs(self, ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
        return ctx.labels.cpu().numpy(), ctx.clusters(self.view).cpu().numpy()


class NMI(_Clustered):
    """Normalised mutual information (arithmetic normaliser) of k-means vs labels."""

    name = "nmi"

    def __call__(self, ctx: EvalContext) -> float:
        return nmi(*self._inputs(ctx))


class CosineNMI(NMI):
    """NMI of spherical (cosine) k-means vs labels."""

    name = "c_nmi"
    view = "cosine"


class AMI(_Clustered):
    """Adjusted mutual information (arithmetic normaliser) of k-means vs labels."""

    name = "ami"

    def __call__(self, ctx: EvalContext) -> float:
        from sklearn.metrics import adjusted_mutual_info_score

        labels, clusters = self._inputs(ctx)
        return float(adjusted_mutual_info_score(labels, clusters, average_method="arithmetic"))


class F1(_Clustered):
    """Pair-counting F1 of k-means vs labels."""

    name = "f1"

    def __call__(self, ctx: EvalContext) -> float:
        return pair_f1(*self._inputs(ctx))


class CosineF1(F1):
    """Pair-counting F1 of spherical (cosine) k-means vs labels."""

    name = "c_f1"
    view = "cosine"
