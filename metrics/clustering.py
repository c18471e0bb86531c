"""Clustering metrics on one seeded k-means with k = the number of classes of the split.

All use every sample of the split (queries and gallery) and the cluster assignment computed once
in the :class:`~metrics.context.EvalContext` (``c_*``: spherical k-means on L2-normalised rows).

* ``nmi`` / ``c_nmi``: normalised mutual information I(Y; K) / ((H(Y) + H(K)) / 2), natural
  logarithms, computed here from the contingency table. The *arithmetic* normaliser is fixed:
  scikit-learn switched its default from geometric to arithmetic in 0.22, which made the
  reference's values version-dependent. Both partitions trivial (one class, one cluster) → 1.
* ``ami``: adjusted mutual information (Vinh, Epps & Bailey, JMLR 2010), arithmetic normaliser:
  AMI = (I − E[I]) / ((H(Y) + H(K)) / 2 − E[I]), E[I] under the hypergeometric model of random
  partitions with the same class and cluster sizes; the same value as scikit-learn's
  ``adjusted_mutual_info_score`` (the test's oracle). E[I] depends on a class and a cluster only
  through their *sizes*, so it is summed over pairs of distinct sizes weighted by how often each
  occurs, instead of over all C·K pairs (README: timing against scikit-learn at SOP scale). There
  are at most √(2N) distinct sizes on each side.
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


def _entropy(counts: np.ndarray) -> float:
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def expected_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """E[I(Y; K)] over random partitions with class sizes ``a`` and cluster sizes ``b``:

    Σ_ij Σ_n (n/N) log(N n / (a_i b_j)) · a_i! b_j! (N−a_i)! (N−b_j)! / (N! n! (a_i−n)! (b_j−n)!
    (N−a_i−b_j+n)!), n from max(1, a_i+b_j−N) to min(a_i, b_j), grouped by distinct sizes."""
    from scipy.special import gammaln  # lazy: scipy costs a second of CPU that --help skips

    n_total = int(a.sum())
    ua, ca = np.unique(a, return_counts=True)
    ub, cb = np.unique(b, return_counts=True)
    big_n = float(n_total)
    lg_n = gammaln(n_total + 1)
    ubf = ub.astype(np.float64)
    emi = 0.0
    for size_a, count_a in zip(ua.astype(np.float64), ca, strict=True):  # ≤ √(2N) distinct sizes
        n = np.arange(1, int(min(size_a, ub.max())) + 1, dtype=np.float64)[None, :]
        bb = ubf[:, None]
        valid = (n <= np.minimum(size_a, bb)) & (n >= size_a + bb - big_n)
        rest = np.where(valid, big_n - size_a - bb + n, 1.0)  # N − a − b + n ≥ 0 where valid
        log_p = (
            gammaln(size_a + 1)
            + gammaln(bb + 1)
            + gammaln(big_n - size_a + 1)
            + gammaln(big_n - bb + 1)
            - lg_n
            - gammaln(n + 1)
            - gammaln(np.where(valid, size_a - n, 0.0) + 1)
            - gammaln(np.where(valid, bb - n, 0.0) + 1)
            - gammaln(rest + 1)
        )
        term = (
            (n / big_n) * (np.log(big_n * n) - np.log(size_a * bb)) * np.exp(np.where(valid, log_p, -np.inf))
        )
        emi += count_a * float((np.where(valid, term, 0.0).sum(1) * cb).sum())
    return emi


def ami(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted mutual information, arithmetic normaliser, with scikit-learn's conventions: two
    one-cluster partitions score 1, one trivial side alone 0; the denominator is kept at least
    machine epsilon away from 0. Identical partitions score 1 (the value wherever AMI is defined;
    all-singleton partitions make it 0/0, which scikit-learn also reports as 1)."""
    cells, a, b = contingency(labels, clusters)
    if len(cells) == len(a) == len(b):  # every class is exactly one cluster
        return 1.0
    if len(a) == 1 or len(b) == 1:
        return 0.0
    h_y, h_k = _entropy(a), _entropy(b)
    mi = max(h_y + h_k - _entropy(cells), 0.0)
    emi = expected_mutual_information(a, b)
    eps = np.finfo(np.float64).eps
    denominator = (h_y + h_k) / 2 - emi
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    return float((mi - emi) / denominator)


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
        return ami(*self._inputs(ctx))


class F1(_Clustered):
    """Pair-counting F1 of k-means vs labels."""

    name = "f1"

    def __call__(self, ctx: EvalContext) -> float:
        return pair_f1(*self._inputs(ctx))


class CosineF1(F1):
    """Pair-counting F1 of spherical (cosine) k-means vs labels."""

    name = "c_f1"
    view = "cosine"
