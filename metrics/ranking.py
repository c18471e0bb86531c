"""The one exact ranking pass of a split: the rank of every relevant gallery item of every query.

Every retrieval metric (Recall@k, precision@k, R-precision, MAP@R, truncated and full AP, MRR) is a
function of *where the relevant items land* in the query's ranking of the gallery, so instead of a
k-nearest-neighbour list this module computes, per query, the sorted 1-based ranks
``rank_1 < rank_2 < … < rank_R`` of its R relevant items (gallery items with the query's label,
the query itself excluded) in the full ranking of the gallery:

    rank_h = 1 + #{g in gallery, g != query : key(g) < key(h-th relevant item)}

* **Ranking key**: (squared Euclidean distance ``(−2 q·g + |g|²) + |q|²`` in float32, in that
  order, clamped at 0, gallery position). The position breaks ties: among equal distances the
  lower gallery index (= the lower index in the split) ranks first, so the result never depends
  on a selection algorithm.
  On L2-normalised rows this is the cosine ranking. ``score`` (``--retrieval_score``) swaps the
  distance for a distribution score of :mod:`metrics.scores` on the same pass (same blocks, keys,
  backends): ``expected_cosine`` (vMF) a scaled inner product, 1 − w_g μ_q·μ_g, at the mean's cost;
  ``mls`` (Gaussian) −MLS, whose pairwise terms do not factor into a matrix product: it is computed
  elementwise in tiles of :data:`MLS_TILE` (query, gallery, dimension) elements (memory: the
  usual block plus a few 256 KB tiles), ~8 element operations (one log) per pair and dimension
  instead of one BLAS multiply-add: 2,000 queries × 2,000 gallery × 128-d took 3.1 s (numba) and
  4.6 s (torch) on 2 cores shared with other jobs (load ~6), ``mean`` 0.3 s and 1.1 s: ~6-9 ns per
  pair and dimension, ~10× ``mean``.
* **Self exclusion by index**: a query that is also a gallery item never ranks *itself*; a
  duplicate of it (another index, distance 0) is a legitimate result. The reference dropped the
  first search result instead, which is wrong whenever a duplicate or a tie comes first.
* **Exact at any depth**: ranks are exact however deep (rank 4,000 of 5,924 included), so the
  truncated APs (``mAP_1000``, ``mAP_lim``) and the untruncated ``mAP`` need no k-limit.
* **Depth** (``depth``; :func:`metrics.compute` passes the deepest cutoff of the requested metrics
  unless one of them, ``mAP`` or ``mrr``, reads every rank): ranks up to the depth are exact, a
  relevant item ranked deeper holds :func:`missing`, on every backend. The numba kernel then skips
  most of each row (a checked bound, see :mod:`metrics._rank_kernel`): at iNaturalist scale the
  pass took 2.6-3.7 instead of 4.3-5.7 ns per distance (2 cores, load ~1, side by side), and
  2.8-3.2 in the benchmark once bounded rows were finished first and skipped by an integer compare.

Cost: one pass over the (Nq × G) distance matrix, in row blocks of ``chunk`` queries (memory
O(chunk · G)); the output is (Nq × W) int64 with W = the most relevant ranks any metric needs
(≤ the largest class). Compared with a top-k search at k = 1,023 (what the study's ``mAP_1000``
and ``mAP_lim`` need), it replaces an O(G log k) selection per query by a bucket count.

Backends (same integers on CPU; on CUDA the float32 distances may round differently):

* ``numba`` (CPU; ``auto`` unless the split is tiny): BLAS computes a product block, then a
  parallel numba kernel finishes each row into distances and makes one pass over it: each
  gallery item's bucket among the row's sorted relevant keys comes from a lookup table over the
  float bits of the distances (no binary search, no branch on the data), and the bucket counts'
  prefix sums are the ranks. Rows whose relevant items are all near the query (SOP-like small
  classes) skip everything beyond them after one compare (per-distance costs: README,
  "Evaluation and metrics").
* ``torch`` (CPU or CUDA, used by ``--evaluate_on_gpu``): the same keys as int64, bucketed with
  ``torch.searchsorted`` and counted with ``bincount``.

Deviation from a "one kNN search with k = the largest k" design: this is one exact ranking pass
that serves every retrieval metric. The ``faiss`` backend (:mod:`metrics.faiss_search`) is the kNN
alternative: a faiss search to the depth the requested metrics need, turned into the same ranks
(equal numbers for every metric it serves; not ``mAP`` or ``mrr``, which need every rank), and with
approximate indexes (IVF, HNSW, IVF-PQ) for galleries too large for an exact pass.
``benchmarks/bench_eval.py`` times it next to this pass.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch

from metrics import _threads, scores

# distance-matrix elements per row block: 16 MB of float32, cache-friendlier than larger blocks
BLOCK_ELEMENTS = 2**22
# Wide galleries: blocks of fewer rows leave the distance matmul and the per-block work thin. At
# iNaturalist's 136k gallery, 16 MB blocks are 30 rows, and the numba pass took 10.8 s for ~19k
# queries against 6.8 s with 128 rows (2 idle cores); at SOP (69 -> 128 rows) it changed by 4 %.
# The floor stops at 128 MB blocks, so memory stays O(rows · N) for any gallery.
MIN_BLOCK_ROWS = 128
MAX_BLOCK_ELEMENTS = 2**25
BACKENDS = ("auto", "numba", "torch", "faiss")
# (query, gallery, dimension) elements per tile of the mls score: 256 KB temporaries stay in L2
# (on one loaded core 2-4x faster than 4 MB tiles; smaller ones pay Python's per-op overhead)
MLS_TILE = 2**16
NUMBA_MIN_ELEMENTS = 2**18  # auto: below this many distances the torch path is as fast, and numba's
# one-time import and kernel load (~1 s per process) is not worth paying
_INT64_MAX = torch.iinfo(torch.int64).max
PAD = _INT64_MAX  # rank stored beyond a query's R: after every real rank and every cutoff


def auto_chunk(n_cols: int, chunk: int | None) -> int:
    """Rows per block: the given one, or as many as fit BLOCK_ELEMENTS, but at least
    MIN_BLOCK_ROWS while the block stays within MAX_BLOCK_ELEMENTS."""
    if chunk is not None and chunk > 0:
        return int(chunk)
    n_cols = max(1, n_cols)
    return max(1, BLOCK_ELEMENTS // n_cols, min(MIN_BLOCK_ROWS, MAX_BLOCK_ELEMENTS // n_cols))


def missing(n_gallery: int) -> int:
    """The rank stored for a relevant item deeper than a requested depth (the ``depth`` of
    :func:`relevant_ranks`, a faiss search's): after every real rank ≤ G, before :data:`PAD`."""
    return n_gallery + 1


def have_numba() -> bool:
    try:
        import numba  # noqa: F401  (an import probe: is the optional kernel usable here?)
    except ImportError:
        return False
    return True


def import_faiss():
    """The faiss module, or a one-line ValueError saying how to install it."""
    try:
        import faiss  # lazy: faiss is optional on some installs (only the faiss backend needs it)
    except ImportError:
        raise ValueError(
            "the faiss backend needs the faiss package (pip install faiss-cpu, or faiss-gpu for CUDA)"
        ) from None
    return faiss


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0 for a CPU-only build); ValueError if faiss is missing."""
    faiss = import_faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def check_backend(backend: str, device: torch.device | str) -> None:
    """Fail early on an unknown backend name, numba asked for on a non-CPU device, faiss when it is
    not installed, or faiss on CUDA without a faiss GPU build."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown ranking backend '{backend}'; choose from: {', '.join(BACKENDS)}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError("the numba backend runs on CPU tensors only; use backend='torch' on CUDA")
    if backend == "faiss":
        if device.type == "cuda" and faiss_gpus() == 0:
            raise ValueError(
                "the faiss backend runs on CUDA only with a faiss GPU build (this faiss sees no GPU); "
                "use backend='torch' on CUDA or compute the metrics on CPU"
            )
        import_faiss()  # not installed: one line, before any work
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"the faiss backend runs on CPU or CUDA, not on {device.type}")


def resolve_backend(backend: str, device: torch.device, n_distances: int) -> str:
    """``auto``: numba on CPU (if installed) unless the split is tiny (fewer than
    NUMBA_MIN_ELEMENTS distances), torch otherwise."""
    check_backend(backend, device)
    if backend == "auto":
        small = n_distances < NUMBA_MIN_ELEMENTS
        return "numba" if device.type == "cpu" and not small and have_numba() else "torch"
    return backend


def _class_layout(labels: torch.Tensor, query_idx: torch.Tensor, gallery_idx: torch.Tensor):
    """Gallery positions grouped by class, and per query the slice of its class and its own
    gallery position (-1 if the query is not in the gallery)."""
    device = labels.device
    _, inv = torch.unique(labels, return_inverse=True)
    g_cls = inv[gallery_idx]
    members = torch.sort(g_cls, stable=True).indices  # gallery positions, by class then position
    per_class = torch.bincount(g_cls, minlength=int(inv.max()) + 1)
    stop = torch.cumsum(per_class, 0)
    q_cls = inv[query_idx]
    pos = torch.full((len(labels),), -1, dtype=torch.long, device=device)
    pos[gallery_idx] = torch.arange(len(gallery_idx), device=device)
    return members, (stop - per_class)[q_cls], stop[q_cls], pos[query_idx]


# (query rows s, e, out buffer or None) -> the (e - s, G) float32 block of ScoreBlocks
Block = Callable[[int, int, "torch.Tensor | None"], torch.Tensor]


class ScoreBlocks(NamedTuple):
    """The ranking key's float under a score, in parts: ``max(0, (alpha · block + col[g]) + row[q])``
    in float32, in this order, on every backend (alpha is ±1 or -2, so its product is exact).

    ``block(s, e, out)`` is a plain matrix product (or the mls score's whole distance): BLAS
    writes the block once instead of first filling it with a broadcast column term (``addmm``),
    and the kernel adds the two vector terms to each row while it is in cache."""

    block: Block
    alpha: float
    col: torch.Tensor  # (G,)
    row: torch.Tensor  # (Nq,)


def finish(d: torch.Tensor, alpha: float, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """A raw block ``d`` (rows × G) turned, in place, into the ranking key's floats:
    ``max(0, (alpha · d + col[g]) + row[q])`` (:class:`ScoreBlocks`; ``row``: the block's rows)."""
    if alpha != 1.0:
        d.mul_(alpha)
    return d.add_(col[None, :]).add_(row[:, None]).clamp_min_(0)


def _distances(q: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor, out: torch.Tensor | None = None):
    """(len(q), len(g)) squared Euclidean distances, clamped at 0: the floats the ranking key
    compares (``mean`` score)."""
    return finish(torch.mm(q, g.T, out=out), -2.0, g_sq, q.pow(2).sum(1))


def _score_blocks(
    score: str,
    x: torch.Tensor,
    params: torch.Tensor | None,
    query_idx: torch.Tensor,
    gallery_idx: torch.Tensor,
) -> ScoreBlocks:
    """The ranking key's distances under ``score``, chosen once per pass (both backends finish
    the blocks alike, so they rank the same floats). ``mean``: |g|² − 2 q·g + |q|² (the distances
    of :func:`_distances`); ``expected_cosine``: 1 − q·(w_g g); ``mls``: the score's whole,
    non-negative distance in the block (:mod:`metrics.scores`)."""
    n_q, n_g = len(query_idx), len(gallery_idx)
    zero_row = torch.zeros(n_q, dtype=torch.float32, device=x.device)
    if score == "mean":
        g = x[gallery_idx]

        def product(s: int, e: int, out: torch.Tensor | None) -> torch.Tensor:
            return torch.mm(x[query_idx[s:e]], g.T, out=out)

        return ScoreBlocks(product, -2.0, g.pow(2).sum(1), x[query_idx].pow(2).sum(1))
    if score == "expected_cosine":
        # A_D(κ_q) > 0 scales the query's row: rank by 1 − w_g μ_q·μ_g, w_g = A_D(κ_g) / max A_D
        a = scores.bessel_ratio(params[gallery_idx, 0].double().exp(), x.shape[1])
        w = (a / a.max().clamp_min(torch.finfo(torch.float64).tiny)).float()
        gw = x[gallery_idx] * w[:, None]

        def scaled(s: int, e: int, out: torch.Tensor | None) -> torch.Tensor:
            return torch.mm(x[query_idx[s:e]], gw.T, out=out)

        ones = torch.ones(n_g, dtype=torch.float32, device=x.device)
        return ScoreBlocks(scaled, -1.0, ones, zero_row)
    if score == "mls":
        # log σ² within ±40: σ², 1/σ² and (σ²_q + σ²_g)/σ²_q stay finite and non-zero in float32
        logvar = params.float().clamp(-40.0, 40.0)
        zero_col = torch.zeros(n_g, dtype=torch.float32, device=x.device)
        return ScoreBlocks(partial(_mls_block, x, logvar, query_idx, gallery_idx), 1.0, zero_col, zero_row)
    raise ValueError(f"unknown retrieval score '{score}'; choose from: {', '.join(scores.SCORES)}")


def _mls_block(x, logvar, query_idx, gallery_idx, s: int, e: int, out: torch.Tensor | None) -> torch.Tensor:
    """(e − s, G) −MLS − (D/2) log 2π − ½ Σ_d log σ²_qd (:mod:`metrics.scores`) in float32, tile by
    tile of at most MLS_TILE (query, gallery, dimension) elements: the pairwise terms do not factor
    into a matrix product, so each costs ~8 element operations (one log) per dimension."""
    mq, lq = x[query_idx[s:e]], logvar[query_idx[s:e]]
    mg, vg = x[gallery_idx], logvar[gallery_idx].exp()
    vq, inv_vq = lq.exp(), (-lq).exp()
    b, n_g, dim = e - s, len(gallery_idx), x.shape[1]
    if out is None:
        out = torch.empty(b, n_g, dtype=torch.float32, device=x.device)
    pairs = max(1, MLS_TILE // dim)
    tc = min(n_g, pairs)
    tr = max(1, min(b, pairs // tc))
    for i in range(0, b, tr):
        qi = slice(i, min(i + tr, b))
        for j in range(0, n_g, tc):
            gj = slice(j, min(j + tc, n_g))
            var = vq[qi, None, :] + vg[None, gj, :]
            diff2 = (mq[qi, None, :] - mg[None, gj, :]).square_()
            # log(σ²_q + σ²_g) − log σ²_q as one log of a ratio ≥ 1: no cancellation between sums
            term = diff2.div_(var).add_(var.mul_(inv_vq[qi, None, :]).log_())
            out[qi, gj] = term.sum(2).mul_(0.5)
    return out


def relevant_ranks(
    x: torch.Tensor,
    labels: torch.Tensor,
    query_idx: torch.Tensor,
    gallery_idx: torch.Tensor,
    width: int,
    *,
    backend: str = "auto",
    chunk: int | None = None,
    numba_mode: int = 0,
    score: str = "mean",
    params: torch.Tensor | None = None,
    depth: int | None = None,
) -> torch.Tensor:
    """(Nq, width) int64: the sorted ranks of the first ``width`` relevant items of each query;
    columns beyond a query's R hold :data:`PAD` (larger than any rank or cutoff). ``score``: the
    ranking key's distance, ``mean`` (squared Euclidean) or a distribution score of
    :mod:`metrics.scores` reading ``params`` (N, P), the rows of ``x``'s distribution parameters
    (``mls``: log σ², ``expected_cosine``: log κ). ``numba_mode`` (tests): 0 lets the kernel pick
    its dense or sparse pass per row, 1 / 2 force one. ``depth``: the deepest rank the caller
    compares with; a relevant item ranked deeper holds :func:`missing` (G + 1) instead of its rank,
    on every backend, which lets the numba pass skip most of a wide gallery (module docstring)."""

    # a CUB-scale pass (4.5G multiply-adds in 16 MB blocks) keeps torch's threads, a tiny one runs on one
    work = len(query_idx) * len(gallery_idx) * x.shape[1]
    with _threads.stage_threads(work, x.device):
        return _relevant_ranks(
            x, labels, query_idx, gallery_idx, width, backend, chunk, numba_mode, score, params, depth
        )


def _relevant_ranks(
    x, labels, query_idx, gallery_idx, width, backend, chunk, numba_mode, score, params, depth
):
    device = x.device
    n_g = len(gallery_idx)
    backend = resolve_backend(backend, device, len(query_idx) * n_g)
    if backend == "faiss":
        raise ValueError("the faiss backend searches to a depth: use metrics.faiss_search.knn_ranks")
    out = torch.full((len(query_idx), max(0, width)), PAD, dtype=torch.long, device=device)
    if width <= 0 or len(query_idx) == 0 or n_g == 0:
        return out
    x = x.float()
    if score != "mean" and params is None:
        raise ValueError(f"score '{score}' ranks by the embeddings' distribution parameters: pass params")
    members, start, stop, self_pos = _class_layout(labels, query_idx, gallery_idx)
    blocks = _score_blocks(score, x, params, query_idx, gallery_idx)
    rows = auto_chunk(n_g, chunk)
    if backend == "numba":
        from metrics import _rank_kernel  # lazy: loading the numba kernel costs ~1 s per process

        _rank_kernel.run(blocks, n_g, members, start, stop, self_pos, out, rows, numba_mode, depth or 0)
    else:
        for s in range(0, len(query_idx), rows):
            e = min(s + rows, len(query_idx))
            d = finish(blocks.block(s, e, None), blocks.alpha, blocks.col, blocks.row[s:e])
            out[s:e] = _ranks_torch(d, members, start[s:e], stop[s:e], self_pos[s:e], width)
    if depth is not None:  # the same integers from every backend, however much each one skipped
        out[(out > depth) & (out != PAD)] = missing(n_g)
    return out


def _keys(d: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """int64 ranking keys: non-negative float32 bit patterns order like the floats, so
    (bits << 32) | column orders by (distance, column); -0.0 (negative bits) counts as 0."""
    return (d.view(torch.int32).clamp_min(0).long() << 32) | cols


def _ranks_torch(d, members, start, stop, self_pos, width):
    """The torch backend for one row block ``d`` (b, G)."""
    b, n_g = d.shape
    device = d.device
    cols = torch.arange(n_g, device=device)
    keys = _keys(d, cols[None, :])
    # each row's relevant gallery positions, padded: members[start + j] for j < size
    size = stop - start
    w_all = int(size.max()) if b else 0
    j = torch.arange(max(w_all, 1), device=device)
    valid = j[None, :] < size[:, None]
    rel_pos = members[(start[:, None] + j[None, :]).clamp(max=len(members) - 1)]
    valid &= rel_pos != self_pos[:, None]
    rel_keys = torch.where(valid, torch.gather(keys, 1, rel_pos), _INT64_MAX)
    rel_keys = torch.sort(rel_keys, dim=1).values
    n_rel = valid.sum(1)
    # the query itself ranks nowhere: its key becomes the padding value (bucket n_rel, ignored)
    has_self = torch.nonzero(self_pos >= 0).flatten()
    keys[has_self, self_pos[has_self]] = _INT64_MAX
    bucket = torch.searchsorted(rel_keys, keys)  # #relevant keys < key: 0..n_rel
    w1 = rel_keys.shape[1] + 1
    flat = (torch.arange(b, device=device)[:, None] * w1 + bucket).flatten()
    counts = torch.bincount(flat, minlength=b * w1).view(b, w1)
    # rank_h = #{keys <= key_h} = Σ_{bucket <= h} counts (the relevant item itself included)
    ranks = torch.cumsum(counts, 1)[:, : w1 - 1]
    ranks = torch.where(torch.arange(w1 - 1, device=device)[None, :] < n_rel[:, None], ranks, PAD)
    out = torch.full((b, width), PAD, dtype=torch.long, device=device)
    w = min(width, ranks.shape[1])
    out[:, :w] = ranks[:, :w]
    return out
