"""Exact k-nearest-neighbour search over a gallery, self excluded by index, deterministic ties.

One search serves every retrieval metric of a split: ``k`` is the largest k any requested metric
needs (capped by the gallery size). Ranking is by squared Euclidean distance
``|q|² − 2 q·g + |g|²`` (on L2-normalised rows this is the cosine ranking).

* **Self exclusion by index**: a query that is also a gallery item never retrieves *itself*
  (its own row index); duplicates of it (other indices, distance 0) are retrieved normally. The
  reference instead dropped the first result, which is wrong whenever a duplicate or a tie comes
  first.
* **Ties**: among equal distances the lower gallery index (= lower index in the split) ranks
  first, also at the k-th place (which items make it into the top k), so the result never depends
  on the backend's selection algorithm.
* **Padding**: a query with fewer than ``k`` candidates (tiny gallery) gets ``-1`` in the unused
  columns; metrics treat them as "nothing retrieved".

Backends: ``torch`` (CPU or CUDA; row chunks of the distance matrix, memory O(chunk · |G|)) and
``faiss`` (CPU ``IndexFlatL2``, fastest on CPU for small k; results are post-processed to the
same tie rule, and rows with a tie at the k-th place are recomputed with the torch path). On CPU
the torch path selects with numpy's introselect (faster than ``torch.topk`` for large k).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

FAISS_MAX_K = 256  # auto backend: faiss up to this k on CPU
BLOCK_ELEMENTS = 2**23  # distance-matrix elements per chunk (32 MB in float32)


def auto_chunk(n_gallery: int, chunk: int | None) -> int:
    """Rows per chunk: the given one, or as many as fit BLOCK_ELEMENTS."""
    if chunk is not None and chunk > 0:
        return int(chunk)
    return max(1, BLOCK_ELEMENTS // max(1, n_gallery))


def _topk_block_numpy(d: np.ndarray, kk: int) -> np.ndarray:
    """CPU selection for one row block: the kk smallest entries per row ordered by (distance,
    column), ties at the k-th place resolved towards lower columns."""
    idx = np.argpartition(d, kk - 1, axis=1)[:, :kk]
    sel = np.take_along_axis(d, idx, 1)
    thr = sel.max(1)
    tie_rows = np.flatnonzero(np.count_nonzero(d <= thr[:, None], axis=1) > kk)
    if len(tie_rows):
        sub, t = d[tie_rows], thr[tie_rows, None]
        lt = sub < t
        eq = sub == t
        need = kk - lt.sum(1, keepdims=True)
        chosen = lt | (eq & (np.cumsum(eq, axis=1) <= need))
        idx[tie_rows] = np.nonzero(chosen)[1].reshape(len(tie_rows), kk)
        sel[tie_rows] = np.take_along_axis(sub, idx[tie_rows], 1)
    # one sort of (distance bits, column) keys: non-negative float32 bit patterns order like the
    # floats, so this is the (distance, column) order with no separate tie pass
    key = np.maximum(sel, 0).view(np.int32).astype(np.int64) << 32
    key |= idx
    key.sort(axis=1)
    return key & 0xFFFFFFFF


def _topk_numpy(d: np.ndarray, kk: int) -> np.ndarray:
    """:func:`_topk_block_numpy` over row blocks in parallel (numpy releases the GIL); numpy's
    introselect is several times faster than ``torch.topk`` for large k on CPU."""
    workers = max(1, min(torch.get_num_threads(), len(d) // 64))
    if workers == 1:
        return _topk_block_numpy(d, kk)
    out = np.empty((len(d), kk), dtype=np.int64)
    bounds = np.linspace(0, len(d), workers + 1).astype(int)

    def run(i: int) -> None:
        a, b = bounds[i], bounds[i + 1]
        out[a:b] = _topk_block_numpy(d[a:b], kk)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, range(workers)))
    return out


def _sorted_topk(d: torch.Tensor, kk: int) -> torch.Tensor:
    """Column indices of the ``kk`` smallest entries per row, ordered by (distance, column)."""
    n_cols = d.shape[1]
    if kk >= n_cols:
        cols = torch.arange(n_cols, device=d.device).expand(d.shape[0], -1)
        order = torch.sort(d, dim=1, stable=True).indices
        return torch.gather(cols, 1, order)
    if d.device.type == "cpu":
        return torch.from_numpy(_topk_numpy(d.numpy(), kk))
    idx = torch.topk(d, kk, dim=1, largest=False, sorted=False).indices
    sel = torch.gather(d, 1, idx)
    thr = sel.max(1).values
    # rows where more than kk entries are <= the kk-th value have a tie at the boundary: take the
    # lowest-index tied entries so the result is independent of the selection algorithm.
    tie_rows = torch.nonzero((d <= thr[:, None]).sum(1) > kk).flatten()
    if len(tie_rows):
        sub, t = d[tie_rows], thr[tie_rows, None]
        lt = sub < t
        need = kk - lt.sum(1, keepdim=True)
        eq = sub == t
        chosen = lt | (eq & (eq.cumsum(1) <= need))
        idx[tie_rows] = torch.nonzero(chosen)[:, 1].view(len(tie_rows), kk)
        sel[tie_rows] = torch.gather(sub, 1, idx[tie_rows])
    order = torch.argsort(sel, dim=1)
    idx, sel = torch.gather(idx, 1, order), torch.gather(sel, 1, order)
    tied = torch.nonzero((sel[:, 1:] == sel[:, :-1]).any(1)).flatten()
    if len(tied):  # equal distances inside the top k: lower index first
        sub_i = torch.sort(idx[tied], dim=1).values
        order = torch.sort(torch.gather(d[tied], 1, sub_i), dim=1, stable=True).indices
        idx[tied] = torch.gather(sub_i, 1, order)
    return idx


def knn_torch(
    x: torch.Tensor,
    query_idx: torch.Tensor,
    gallery_idx: torch.Tensor,
    k: int,
    chunk: int | None = None,
) -> torch.Tensor:
    """(Nq, k) split indices of each query's k nearest gallery items (``-1`` padding)."""
    device = x.device
    query_idx, gallery_idx = query_idx.to(device), gallery_idx.to(device)
    g = x[gallery_idx]
    n_g = len(gallery_idx)
    k = min(k, n_g)
    out = torch.full((len(query_idx), k), -1, dtype=torch.long, device=device)
    if k <= 0 or len(query_idx) == 0:
        return out
    # position of every split index in the gallery (-1: not in the gallery), for self exclusion
    pos = torch.full((len(x),), -1, dtype=torch.long, device=device)
    pos[gallery_idx] = torch.arange(n_g, device=device)
    g_sq = g.pow(2).sum(1)
    kk = min(n_g, k + 1)
    rows_per_chunk = auto_chunk(n_g, chunk)
    for start in range(0, len(query_idx), rows_per_chunk):  # bounded memory: one row block at a time
        q_idx = query_idx[start : start + rows_per_chunk]
        q = x[q_idx]
        d = torch.addmm(g_sq[None, :], q, g.T, alpha=-2.0).add_(q.pow(2).sum(1, keepdim=True))
        self_pos = pos[q_idx]
        has_self = torch.nonzero(self_pos >= 0).flatten()
        d[has_self, self_pos[has_self]] = float("inf")
        cols = _sorted_topk(d, kk)
        nbr = gallery_idx[cols]
        # self (distance inf) sorts last; drop it where it was selected
        nbr = torch.where(torch.gather(d, 1, cols).isinf(), -1, nbr)
        out[start : start + len(q_idx)] = nbr[:, :k]
    return out


def knn_faiss(
    x: torch.Tensor,
    query_idx: torch.Tensor,
    gallery_idx: torch.Tensor,
    k: int,
    chunk: int | None = None,
) -> torch.Tensor:
    """The same as :func:`knn_torch` with faiss-cpu's exact ``IndexFlatL2`` (CPU tensors only)."""
    import faiss

    xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    q_np, g_np = query_idx.cpu().numpy(), gallery_idx.cpu().numpy()
    n_g = len(g_np)
    k = min(k, n_g)
    out = torch.full((len(q_np), k), -1, dtype=torch.long)
    if k <= 0 or len(q_np) == 0:
        return out
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(xn[g_np]))
    # one extra for the query itself, one more to detect a tie at the k-th place
    ks = min(n_g, k + 2)
    rows_per_chunk = max(1, 2**23 // max(1, ks))
    redo: list[np.ndarray] = []
    for start in range(0, len(q_np), rows_per_chunk):
        rows = q_np[start : start + rows_per_chunk]
        dist, pos = index.search(np.ascontiguousarray(xn[rows]), ks)
        nbr = g_np[pos]
        # drop the query itself (at most once per row) by shifting the rest of the row left
        is_self = nbr == rows[:, None]
        cols = np.arange(ks)[None, :] + (np.cumsum(is_self, axis=1) > 0)
        cols = np.minimum(cols, ks - 1)
        nbr, dist = np.take_along_axis(nbr, cols, 1), np.take_along_axis(dist, cols, 1)
        dist[:, ks - 1] = np.where(is_self.any(1), np.inf, dist[:, ks - 1])
        # faiss returns ascending distances; equal distances get the lower index first
        tied = np.flatnonzero((dist[:, 1:] == dist[:, :-1]).any(1))
        if len(tied):
            sub_n, sub_d = nbr[tied], dist[tied]
            order = np.lexsort((sub_n, sub_d), axis=-1)
            nbr[tied], dist[tied] = np.take_along_axis(sub_n, order, 1), np.take_along_axis(sub_d, order, 1)
        if ks > k:
            # a tie between the last kept and the first dropped result (self sorts last, so both
            # are real candidates): which of the tied items is kept is faiss's choice; redo exactly
            tie = (dist[:, k - 1] == dist[:, k]) & np.isfinite(dist[:, k])
            redo.append(start + np.flatnonzero(tie))
        nbr = np.where(np.isinf(dist), -1, nbr)[:, :k]
        out[start : start + len(rows)] = torch.from_numpy(nbr)
    redo_rows = np.concatenate(redo) if redo else np.empty(0, dtype=np.int64)
    if len(redo_rows):
        out[redo_rows] = knn_torch(x.cpu(), query_idx.cpu()[redo_rows], gallery_idx.cpu(), k, chunk)
    return out


def knn(
    x: torch.Tensor,
    query_idx: torch.Tensor,
    gallery_idx: torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    chunk: int | None = None,
) -> torch.Tensor:
    """Dispatch to a backend; ``auto`` is faiss on CPU for k <= FAISS_MAX_K, else torch."""
    if backend == "auto":
        # faiss's fused search wins for small k; for large k (mAP_1000, mAP_lim) the matrix product
        # + numpy introselect of the torch path is faster
        backend = "faiss" if x.device.type == "cpu" and k <= FAISS_MAX_K and _have_faiss() else "torch"
    if backend == "faiss":
        if x.device.type != "cpu":
            raise ValueError("the faiss backend runs on CPU tensors only; use backend='torch' on CUDA")
        return knn_faiss(x, query_idx, gallery_idx, k, chunk)
    if backend == "torch":
        return knn_torch(x, query_idx, gallery_idx, k, chunk)
    raise ValueError(f"unknown search backend '{backend}'; choose from: auto, torch, faiss")


def _have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
