"""The numba CPU kernel of :func:`metrics.kmeans.nearest_two` (imported only when it runs).

One pass per row of a distance block finds the nearest centroid (the first one on a tie, as
``torch.argmin``), its distance and the second smallest distance (equal to the first on a tie), the
same values the torch path gets from ``argmin``, ``gather``, ``scatter_`` and ``min``, in one read
instead of four, from a plain BLAS product (the kernel adds |c|² − 2·, exactly as ``addmm``
rounds it: the product by −2 is exact, so one rounding either way). At SOP scale (11k
centroids) that is most of the k-means time after the matrix product. Rows in parallel; the
result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from metrics._threads import numba_threads_like_torch


@njit(parallel=True, cache=True, nogil=True)
def _min2_block(d, c_sq, assign, first, second):  # pragma: no cover - compiled
    # (three vectorisable passes -- minimum, its position, minimum of the others -- measured
    # 2.7x slower than this one compare chain: numba did not vectorise the float min reduction)
    for i in prange(d.shape[0]):
        m1 = np.inf
        m2 = np.inf
        a = 0
        for j in range(d.shape[1]):
            v = np.float32(-2.0) * d[i, j] + c_sq[j]  # addmm's |c|² − 2 x·c: the product is exact
            if v < m2:  # rare once the row's two smallest are found: a well-predicted branch
                if v < m1:
                    m2 = m1
                    m1 = v
                    a = j
                else:
                    m2 = v
        assign[i] = a
        first[i] = m1
        second[i] = m2


def min2(
    d: torch.Tensor, c_sq: torch.Tensor, assign: torch.Tensor, first: torch.Tensor, second: torch.Tensor
) -> None:
    """Fill ``assign`` (int64), ``first`` and ``second`` (float32) from the CPU product block
    ``d`` = x·cᵀ and the centroids' squared norms ``c_sq``: the distances |c|² − 2 x·c are
    finished here, row by row in cache, instead of by a broadcast copy of |c|² into the block
    before the product (``addmm``), one write and one read of the block fewer."""
    with numba_threads_like_torch():
        _min2_block(d.numpy(), c_sq.numpy(), assign.numpy(), first.numpy(), second.numpy())
