"""Seeded Lloyd k-means, one implementation for every backend.

* **k** = the number of classes *of the evaluated split* (the reference used the number of
  training classes on every split).
* **Initialisation**: k distinct rows drawn by ``torch.randperm`` from a generator seeded with
  ``--seed`` (the reference used faiss's fixed internal seed 1234 whatever ``--seed`` was).
* **Iterations**: at most ``niter`` (20, as in the study) assign/update steps; it stops early when
  no assignment changes, since then every further step is a no-op (same result, less time).
* **Assignment**: nearest centroid by squared Euclidean distance; a tie goes to the lower
  centroid index (torch backend). The faiss backend (``IndexFlatL2``) only replaces this step,
  so both backends give the same clusters up to floating-point near-ties.
* **Update**: the mean of the members; an empty cluster keeps its previous centroid (faiss instead
  splits a large cluster; keeping it is deterministic and backend-independent).
* **Spherical** (cosine, ``c_nmi``/``c_f1``): rows are L2-normalised and centroids are
  re-normalised after every update, so the assignment maximises cosine similarity. The reference
  overwrote its cosine centroids with the normalised *Euclidean* ones; here they are kept.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.search import auto_chunk


def assign_torch(x: torch.Tensor, centroids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """(N,) index of each row's nearest centroid (ties: lower centroid index)."""
    c_sq = centroids.pow(2).sum(1)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    rows = auto_chunk(len(centroids), chunk)
    for start in range(0, len(x), rows):  # one row block at a time keeps memory bounded
        xb = x[start : start + rows]
        d = torch.addmm(c_sq[None, :], xb, centroids.T, alpha=-2.0)  # |x|² is constant per row
        out[start : start + len(xb)] = d.argmin(1)
    return out


def assign_faiss(x: torch.Tensor, centroids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32))
    _, assign = index.search(np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32), 1)
    return torch.from_numpy(assign[:, 0]).to(x.device)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    spherical: bool = False,
    backend: str = "torch",
    chunk: int | None = None,
) -> torch.Tensor:
    """(N,) cluster index of every row of ``x`` (N, D) after seeded Lloyd k-means."""
    n = len(x)
    if k < 1:
        raise ValueError("k-means needs k >= 1")
    k = min(k, n)
    x = x.float()
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
    assign_fn = assign_faiss if backend == "faiss" else assign_torch
    gen = torch.Generator().manual_seed(int(seed))
    init = torch.randperm(n, generator=gen)[:k].to(x.device)
    centroids = x[init].clone()
    assign = assign_fn(x, centroids, chunk)
    for _ in range(niter):
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        if spherical:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
        new = assign_fn(x, centroids, chunk)
        if torch.equal(new, assign):
            break
        assign = new
    return assign
