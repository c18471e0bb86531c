"""Seeded Lloyd k-means, one implementation for every backend.

* **k** = the number of classes *of the evaluated split* (the reference used the number of
  training classes on every split).
* **Initialisation**: k distinct rows drawn by ``torch.randperm`` from a generator seeded with
  ``--seed`` (the reference used faiss's fixed internal seed 1234 whatever ``--seed`` was).
  Random initialisation, as faiss and the study, so NMI/F1 stay comparable with published
  numbers; like any Lloyd run it can end in a local optimum (k-means++ would be O(k·N·D)
  sequential work, too slow for SOP's 11k clusters).
* **Iterations**: at most ``niter`` (20, as in the study) assign/update steps; it stops early when
  no assignment changes, since then every further step is a no-op (same result, less time).
* **Assignment**: nearest centroid by Euclidean distance; a tie goes to the lower centroid index.
  Exact Lloyd, accelerated with Hamerly's bounds (Hamerly, "Making k-means even faster", SDM
  2010): every point keeps an upper bound on the distance to its centroid and a lower bound on the
  distance to every other one; after an update the bounds move by the centroids' drifts, and only
  points whose bounds overlap are re-assigned (by a chunked matrix product against all
  centroids). The result is that of plain Lloyd; the work shrinks as the centroids settle, which
  matters at SOP scale (11k clusters). The nearest and second-nearest centroid of a block come from
  torch (``argmin`` + ``min``; CPU or CUDA) or, on CPU, from one numba pass over the block
  (:mod:`metrics._kmeans_kernel`; ~1.5× faster k-means at SOP scale); both read the same
  distance block, so every backend gives the same clusters.
* **Update**: the mean of the members; an empty cluster keeps its previous centroid (faiss instead
  splits a large cluster; keeping it is deterministic and backend-independent).
* **Spherical** (cosine, ``c_nmi``/``c_f1``): rows are L2-normalised and centroids are
  re-normalised after every update, so the assignment maximises cosine similarity. The reference
  overwrote its cosine centroids with the normalised *Euclidean* ones; here they are kept.

``kmeans="faiss"`` (:func:`metrics.faiss_search.kmeans`) runs ``faiss.Kmeans`` instead: same k, same
seed and iteration count, a different initialisation and empty-cluster rule, so different (seeded,
deterministic) clusters; this implementation is the default.
"""

from __future__ import annotations

import torch

from metrics import _threads
from metrics.ranking import NUMBA_MIN_ELEMENTS, auto_chunk, have_numba, import_faiss

IMPLEMENTATIONS = ("torch", "faiss")


def check_implementation(name: str) -> None:
    """Fail early on an unknown k-means implementation, or ``faiss`` without faiss installed."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown k-means implementation '{name}'; choose from: {', '.join(IMPLEMENTATIONS)}"
        )
    if name == "faiss":
        import_faiss()


def nearest_two(x: torch.Tensor, centroids: torch.Tensor, chunk: int | None = None, backend: str = "auto"):
    """Per row of ``x``: index of the nearest centroid (ties: lower index), the distance to it and
    the distance to the second nearest (inf if there is one centroid). ``backend``: ``auto``
    (the numba pass on CPU for large blocks), ``numba`` or ``torch``; same results."""
    c_sq = centroids.pow(2).sum(1)
    n, k = len(x), len(centroids)
    use_numba = x.device.type == "cpu" and (
        backend == "numba" or (backend == "auto" and n * k >= NUMBA_MIN_ELEMENTS and have_numba())
    )
    assign = torch.empty(n, dtype=torch.long, device=x.device)
    first = torch.empty(n, dtype=x.dtype, device=x.device)
    second = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    rows = auto_chunk(k, chunk)
    buf = torch.empty(min(rows, n), k, dtype=x.dtype, device=x.device)  # reused: no page faults
    for start in range(0, n, rows):  # one row block at a time keeps memory bounded
        xb = x[start : start + rows]
        end = start + len(xb)
        # |c|² − 2 x·c: the row's |x|² is added to the two minima only, it does not change the order
        if use_numba:
            from metrics import _kmeans_kernel  # lazy: loading the numba kernel costs ~1 s per process

            d = torch.mm(xb, centroids.T, out=buf[: len(xb)])
            _kmeans_kernel.min2(d, c_sq, assign[start:end], first[start:end], second[start:end])
            continue
        d = torch.addmm(c_sq[None, :], xb, centroids.T, alpha=-2.0, out=buf[: len(xb)])
        a = d.argmin(1)
        assign[start:end] = a
        first[start:end] = d.gather(1, a[:, None])[:, 0]
        if d.shape[1] > 1:
            d.scatter_(1, a[:, None], float("inf"))
            second[start:end] = d.min(1).values
    x_sq = x.pow(2).sum(1)
    return assign, (first + x_sq).clamp_min(0).sqrt(), (second + x_sq).clamp_min(0).sqrt()


def prepare(x: torch.Tensor, k: int, spherical: bool) -> tuple[torch.Tensor, int]:
    """The rows every k-means backend clusters (float32; unit-norm when ``spherical``) and k capped
    at their number; k < 1 is a ValueError."""
    if k < 1:
        raise ValueError("k-means needs k >= 1")
    x = x.float()
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
    return x, min(k, len(x))


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    spherical: bool = False,
    chunk: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """(N,) cluster index of every row of ``x`` (N, D) after seeded Lloyd k-means. ``backend``
    picks the nearest-centroid pass (see :func:`nearest_two`); every backend gives the same result."""

    x, k = prepare(x, k, spherical)
    # CUB scale (76M multiply-adds per pass, hundreds of small parallel regions) runs on one thread,
    # SOP scale on torch's; the late passes that re-check few points stay on the stage's count, so
    # SOP-scale clusters are today's (a 1-row product rounds differently on one and two threads)
    with _threads.stage_threads(len(x) * k * x.shape[1], x.device):
        return _lloyd(x, k, seed, niter, spherical, chunk, backend)


def _lloyd(x: torch.Tensor, k: int, seed: int, niter: int, spherical: bool, chunk: int | None, backend: str):
    n = len(x)
    gen = torch.Generator().manual_seed(int(seed))
    centroids = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    assign, upper, lower = nearest_two(x, centroids, chunk, backend)
    # slack for rounding in the expanded distance formula: never skip a point on a near-tie
    eps = 1e-4 * float(x.norm(dim=1).max().clamp_min(1e-12))
    for _ in range(niter):
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        new = centroids.clone()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        if spherical:
            new = torch.nn.functional.normalize(new, dim=1)
        drift = (new - centroids).norm(dim=1)
        centroids = new
        upper += drift[assign]
        if k > 1:
            top = torch.topk(drift, 2)
            # the nearest *other* centroid moved at most by the largest drift among the others
            lower -= torch.where(assign == top.indices[0], top.values[1], top.values[0])
        check = torch.nonzero(upper + eps >= lower).flatten()
        if len(check) == 0:
            break
        if 2 * len(check) > n:
            # most points need a look (overlapping clusters, e.g. iNaturalist's 2,452 at 55 images
            # each, where 93-98 % do in every iteration): one pass over all rows costs less than
            # gathering the checked ones and tightening their bounds first (~130 of ~800 ms per
            # iteration there); the rows the bounds had cleared keep their centroid either way
            a, upper, lower = nearest_two(x, centroids, chunk, backend)
            changed = bool((a != assign).any())
            assign = a
            if not changed:
                break
            continue
        upper[check] = (x[check] - centroids[assign[check]]).norm(dim=1)
        check = check[upper[check] + eps >= lower[check]]
        if len(check) == 0:
            break
        a, u, l2 = nearest_two(x[check], centroids, chunk, backend)
        changed = bool((a != assign[check]).any())
        assign[check], upper[check], lower[check] = a, u, l2
        if not changed:
            break
    return assign
