"""The ``faiss`` retrieval backend: a k-nearest-neighbour search instead of the exact ranking pass,
and faiss's k-means as an alternative clustering.

**Search depth.** faiss returns each query's k nearest gallery items, so the ranks it yields are
exact only within k. The depth is the largest that any requested metric reads
(:meth:`metrics.retrieval._Ranked.search_depth`): ``e_recall@k`` / ``c_recall@k`` / ``precision@k``
-> k; ``r_precision``, ``mAP@R``, ``mAP_c`` -> the largest R; ``mAP_1000`` -> 1000; ``mAP_lim`` ->
1023; always capped by the gallery. Every metric is then a function of ranks ≤ its own cutoff ≤ the
depth, so the numbers equal the exact pass's. ``mAP`` (untruncated) and ``mrr`` (the first relevant
item at *any* depth) cannot be served and are refused before any search
(:func:`metrics.check_faiss_request`).

**From kNN lists to ranks.** The search asks for ``depth + 1`` neighbours when a query can be in the
gallery; its own gallery position is dropped **by index** wherever it appears (a duplicate at
distance 0 stays, as in :mod:`metrics.ranking`), and the list is cut to ``depth``. The 1-based
position of each relevant item in that list is its rank; relevant items not found within the depth
get :func:`missing` (gallery size + 1: after every rank the metrics compare with), columns beyond a
query's R hold :data:`metrics.ranking.PAD`: the same (Nq × W) tensor as the exact pass.

**Distances and ties.** Both views are searched with ``IndexFlatL2`` (the cosine view on
L2-normalised features: squared Euclidean distance orders exactly like cosine similarity, and is
the key :mod:`metrics.ranking` uses). faiss keeps the lower gallery position on equal distances
(its heaps compare ``(distance, id)``), as the exact pass does; a list that comes back otherwise is
re-sorted by ``(distance, position)``. faiss computes ``|q|² + |g|² − 2 q·g`` with its own BLAS
call, so two distances within float32 rounding of each other (~1e-7) may order differently than in
the exact pass, as on CUDA. The tests' seeded splits give bit-identical numbers; on the benchmark's
synthetic CUB-scale split 43 of 308k relevant ranks within 1023 moved by one place (SOP scale: 5 of
293k): Recall@k, precision and R-precision unchanged, the APs within 1.5e-7.

**Approximate indexes** (``index``; parameters in ``index_params``, unset ones default):

* ``ivf``: ``IndexIVFFlat``; ``nlist`` cells (default ≈ 4·√G, at most G/39 so every cell has 39
  training points), ``nprobe`` cells visited per query (16). The coarse k-means trains on a
  seeded sample of at most 64 points per cell (faiss's default, 256, made training 1M items
  into 4,000 cells cost more than all the searches together on 2 cores).
* ``hnsw``: ``IndexHNSWFlat``; ``M`` links per node (32), ``efSearch`` (128, raised to the depth
  when smaller), ``efConstruction`` (40, faiss's default). Its graph is built in parallel, which
  makes it depend on thread timing: two runs can differ slightly (IVF and IVF-PQ do not).
* ``ivfpq``: ``IndexIVFPQ``; ``nlist``, ``nprobe`` as ``ivf``, ``m`` sub-quantizers of 8 bits
  (default: the largest divisor of D that is ≤ 16). Needs ≥ 256 gallery items. ``refine`` (4):
  the ``refine``·k nearest by PQ distance are re-ranked by their exact distance (``IndexRefine``
  over a flat copy of the gallery), which lifts its recall to that of ``ivf`` with the same cells
  at PQ's scanning cost; ``refine=1`` keeps the PQ order (recall@4 about 0.75-0.85 instead of
  0.9 on the tests' 32-d data).

Coarse and PQ training use faiss's clustering with ``seed`` (``index.cp.seed``,
``index.pq.cp.seed``), so a run is reproducible. Every approximate search is measured against exact
search: on ``recall_sample`` queries (drawn with a ``torch.Generator`` seeded with ``seed``), the
fraction of the exact top-``depth`` (self excluded) found in the approximate top-``depth``,
reported as ``search_recall@<depth>`` (``..._cosine`` for a separately searched cosine view).

**Devices.** On a CUDA context with a faiss GPU build (``faiss.get_num_gpus() > 0``) the index is
built on CPU (same training) and copied with ``index_cpu_to_gpu``; ``hnsw`` has no GPU version and
searches on CPU; a depth beyond faiss-GPU's selection limit (2048) searches on CPU too. Without a
GPU build, :func:`metrics.ranking.check_backend` refuses ``faiss`` on CUDA.

**k-means** (``kmeans="faiss"``): ``faiss.Kmeans(d, k, niter, seed)`` with every point used for
training (no subsampling) and faiss's random initialisation and empty-cluster splitting; the
assignment is to the final centroids. A different algorithm from :mod:`metrics.kmeans` (the
clusters differ), seeded and deterministic, for splits where the torch k-means is slow.

``faiss`` is optional (``faiss-cpu`` is a dev dependency): it is imported inside the functions that
use it, and asking for it without an install fails with one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from metrics.kmeans import prepare as kmeans_input
from metrics.ranking import BLOCK_ELEMENTS, PAD, faiss_gpus, import_faiss, missing

INDEXES = ("flat", "ivf", "hnsw", "ivfpq")
# the parameters each index reads; a key known to some index is ignored by the others, so one dict
# of flag values serves every index
INDEX_PARAMS = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "hnsw": ("M", "efSearch", "efConstruction"),
    "ivfpq": ("nlist", "nprobe", "m", "refine"),
}
KNOWN_PARAMS = tuple(dict.fromkeys(p for params in INDEX_PARAMS.values() for p in params))
GPU_MAX_K = 2048  # faiss-GPU's largest k for a search
PQ_BITS = 8
PQ_MAX_M = 16
COARSE_POINTS_PER_CELL = 64  # coarse k-means training sample per cell (faiss: 256)
REFINE = 4  # ivfpq: exact re-ranking of REFINE·k PQ candidates (1: the PQ order as it is)


def use_gpu(device: torch.device) -> bool:
    return device.type == "cuda" and faiss_gpus() > 0


def check_index(index: str, index_params: dict | None, backend: str) -> None:
    """Fail early on an unknown index, a parameter no index reads, a non-positive value, or an
    approximate index without the faiss backend."""
    if index not in INDEXES:
        raise ValueError(f"unknown faiss index '{index}'; choose from: {', '.join(INDEXES)}")
    if index != "flat" and backend != "faiss":
        raise ValueError(f"index '{index}' is a faiss index: use --eval_backend faiss (or --eval_index flat)")
    for key, value in (index_params or {}).items():
        if key not in KNOWN_PARAMS:
            raise ValueError(f"unknown faiss index parameter '{key}'; known: {', '.join(KNOWN_PARAMS)}")
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"faiss index parameter {key} must be a positive integer, got {value!r}")


def default_nlist(n_gallery: int) -> int:
    """≈ 4·√G cells, at most G/39 (faiss wants ≥ 39 training points per cell), at least 1."""
    return max(1, min(round(4 * math.sqrt(n_gallery)), n_gallery // 39))


def default_pq_m(dim: int) -> int:
    """The largest divisor of D that is ≤ 16 (each sub-quantizer codes D/m dimensions in 8 bits)."""
    return max(m for m in range(1, min(PQ_MAX_M, dim) + 1) if dim % m == 0)


def resolve_params(index: str, index_params: dict | None, n_gallery: int, dim: int) -> dict[str, int]:
    """The parameters ``index`` reads, defaults filled in and checked against the gallery."""
    given = {k: int(v) for k, v in (index_params or {}).items() if k in INDEX_PARAMS[index]}
    params: dict[str, int] = {}
    if index in ("ivf", "ivfpq"):
        params["nlist"] = given.get("nlist", default_nlist(n_gallery))
        if params["nlist"] > n_gallery:
            raise ValueError(f"{index}: nlist = {params['nlist']} exceeds the gallery ({n_gallery} items)")
        params["nprobe"] = min(given.get("nprobe", 16), params["nlist"])
    if index == "hnsw":
        params["M"] = given.get("M", 32)
        params["efSearch"] = given.get("efSearch", 128)
        params["efConstruction"] = given.get("efConstruction", 40)
    if index == "ivfpq":
        params["m"] = given.get("m", default_pq_m(dim))
        params["refine"] = given.get("refine", REFINE)
        if dim % params["m"]:
            raise ValueError(f"ivfpq: m = {params['m']} sub-quantizers must divide the dimension {dim}")
        if n_gallery < 2**PQ_BITS:
            raise ValueError(
                f"ivfpq needs at least {2**PQ_BITS} gallery items to train its {PQ_BITS}-bit codebooks, "
                f"got {n_gallery}; use --eval_index flat, ivf or hnsw"
            )
    return params


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


_GPU_RESOURCES: dict[int, object] = {}


def _to_gpu(cpu_index, device: torch.device):
    faiss = import_faiss()
    dev = device.index if device.index is not None else 0
    if dev not in _GPU_RESOURCES:  # one resource object (scratch memory, streams) per GPU
        _GPU_RESOURCES[dev] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[dev], dev, cpu_index)


def build_index(
    index: str,
    gallery: np.ndarray,
    params: dict[str, int],
    seed: int,
    device: torch.device = torch.device("cpu"),
    k: int = 1,
):
    """A faiss index over ``gallery`` (G, D) float32, trained with ``seed``, ready to search
    ``k`` deep: on ``device``'s GPU where a faiss GPU build can hold it, else on CPU."""
    faiss = import_faiss()
    dim = gallery.shape[1]
    if index == "flat":
        built = faiss.IndexFlatL2(dim)
    elif index == "hnsw":
        built = faiss.IndexHNSWFlat(dim, params["M"])
        built.hnsw.efConstruction = params["efConstruction"]
    else:
        quantizer = faiss.IndexFlatL2(dim)
        if index == "ivf":
            built = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_L2)
        else:
            built = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], PQ_BITS)
            built.pq.cp.seed = int(seed)  # the PQ codebooks' k-means: its own RNG, seeded here
            built.pq.cp.min_points_per_centroid = 1  # small galleries: no advisory warning on stderr
        built.cp.seed = int(seed)  # the coarse k-means (and its subsampling): seeded, not faiss's 1234
        built.cp.max_points_per_centroid = COARSE_POINTS_PER_CELL
        built.train(gallery)
    built.add(gallery)
    if index in ("ivf", "ivfpq"):
        built.nprobe = params["nprobe"]
    if index == "hnsw":  # CPU only (faiss has no GPU HNSW); it returns at most efSearch results
        built.hnsw.efSearch = max(params["efSearch"], k)
        return built
    refine = params.get("refine", 1) if index == "ivfpq" else 1
    if use_gpu(device) and k * refine <= GPU_MAX_K:
        built = _to_gpu(built, device)
    if refine > 1:  # re-rank refine·k PQ candidates by their exact distance (on CPU)
        exact = faiss.IndexFlatL2(dim)
        exact.add(gallery)
        built = faiss.IndexRefine(built, exact)
        built.k_factor = float(refine)
    return built


def _search(built, queries: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, ids) of the k nearest, in (distance, id) order; ids -1 where none was found."""
    dist, ids = built.search(queries, k)
    dist, ids = torch.from_numpy(dist), torch.from_numpy(ids)
    # faiss's heaps keep the lower id first on equal distances; re-sort any row that is not so
    bad = ((dist[:, 1:] == dist[:, :-1]) & (ids[:, 1:] < ids[:, :-1]) & (ids[:, 1:] >= 0)).any(1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        d, i = dist[rows], ids[rows]
        order = torch.argsort(i, dim=1, stable=True)  # by id, then stably by distance
        d, i = d.gather(1, order), i.gather(1, order)
        order = torch.argsort(d, dim=1, stable=True)  # (-1 entries carry faiss's largest distance)
        dist[rows], ids[rows] = d.gather(1, order), i.gather(1, order)
    return dist, ids


def _neighbours(ids: torch.Tensor, self_pos: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each query's own position, keep the first ``depth`` results: (valid mask, 1-based rank)."""
    valid = (ids >= 0) & (ids != self_pos[:, None])
    rank = torch.cumsum(valid, 1)
    return valid & (rank <= depth), rank


def ranks_from_knn(
    ids: torch.Tensor,
    self_pos: torch.Tensor,
    q_labels: torch.Tensor,
    g_labels: torch.Tensor,
    n_relevant: torch.Tensor,
    depth: int,
    width: int,
    n_gallery: int,
) -> torch.Tensor:
    """(b, width) sorted ranks from kNN lists ``ids`` (b, K) of gallery positions (-1: none)."""
    b = ids.shape[0]
    valid, rank = _neighbours(ids, self_pos, depth)
    rel = valid & (g_labels[ids.clamp_min(0)] == q_labels[:, None])
    col = torch.cumsum(rel, 1) - 1  # the h-th relevant item found goes to column h - 1
    cols = torch.arange(width, device=ids.device)
    out = torch.where(cols[None, :] < n_relevant[:, None], missing(n_gallery), PAD).expand(b, width)
    out = out.contiguous()
    r, c = torch.nonzero(rel & (col < width), as_tuple=True)
    out[r, col[r, c]] = rank[r, c]
    return out


def knn_ranks(
    x: torch.Tensor,
    labels: torch.Tensor,
    query_idx: torch.Tensor,
    gallery_idx: torch.Tensor,
    width: int,
    depth: int,
    *,
    index: str = "flat",
    index_params: dict | None = None,
    seed: int = 0,
    recall_sample: int = 1000,
    timed: Callable[[str], AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, tuple[int, float] | None]:
    """(Nq, width) int64 sorted relevant ranks from a faiss search to ``depth``, and for an
    approximate index ``(depth, search recall)`` against exact search (None for ``flat``).

    ``x`` (N, D) are the features of the view (raw or L2-normalised), ``timed(stage)`` a context
    manager that adds a stage's seconds to the split's timings."""
    timed = timed or (lambda stage: nullcontext())
    device = x.device
    n_q, n_g = len(query_idx), len(gallery_idx)
    out = torch.full((n_q, max(0, width)), PAD, dtype=torch.long, device=device)
    if n_q == 0 or n_g == 0:
        return out, None
    labels_cpu = labels.cpu()
    q_idx, g_idx = query_idx.cpu(), gallery_idx.cpu()
    pos = torch.full((len(labels_cpu),), -1, dtype=torch.long)
    pos[g_idx] = torch.arange(n_g)
    self_pos = pos[q_idx]
    depth = max(1, min(depth, n_g - int(bool((self_pos >= 0).all()))))  # at most the candidates
    k = min(depth + int(bool((self_pos >= 0).any())), n_g)  # one more: the query itself comes back
    q_labels, g_labels = labels_cpu[q_idx], labels_cpu[g_idx]
    _, inv = torch.unique(labels_cpu, return_inverse=True)
    per_class = torch.bincount(inv[g_idx], minlength=int(inv.max()) + 1)
    n_relevant = per_class[inv[q_idx]] - (self_pos >= 0).long()

    feats = _numpy(x)
    gallery = np.ascontiguousarray(feats[g_idx.numpy()])
    with timed("faiss_index"):
        params = resolve_params(index, index_params, n_g, feats.shape[1])
        searcher = build_index(index, gallery, params, seed, device, k)
    rows = max(1, BLOCK_ELEMENTS // k)  # query rows per search: bounded (rows × k) result blocks
    with timed("ranking"):
        for s in range(0, n_q, rows):
            e = min(s + rows, n_q)
            _, ids = _search(searcher, np.ascontiguousarray(feats[q_idx[s:e].numpy()]), k)
            block = ranks_from_knn(
                ids, self_pos[s:e], q_labels[s:e], g_labels, n_relevant[s:e], depth, width, n_g
            )
            out[s:e] = block.to(device)
    if index == "flat":
        return out, None
    with timed("search_recall"):
        recall = search_recall(
            searcher, gallery, feats, q_idx, self_pos, depth, k, seed, recall_sample, device
        )
    return out, (depth, recall)


def search_recall(
    searcher,
    gallery: np.ndarray,
    feats: np.ndarray,
    q_idx: torch.Tensor,
    self_pos: torch.Tensor,
    depth: int,
    k: int,
    seed: int,
    sample: int,
    device: torch.device,
) -> float:
    """Mean over ``sample`` seeded queries of |approximate top-depth ∩ exact top-depth| / |exact|."""
    gen = torch.Generator().manual_seed(int(seed))
    pick = torch.sort(torch.randperm(len(q_idx), generator=gen)[: max(1, sample)]).values
    queries = np.ascontiguousarray(feats[q_idx[pick].numpy()])
    exact = build_index("flat", gallery, {}, seed, device, k)
    _, approx_ids = _search(searcher, queries, k)
    _, exact_ids = _search(exact, queries, k)
    sp = self_pos[pick]
    a_valid, _ = _neighbours(approx_ids, sp, depth)
    e_valid, _ = _neighbours(exact_ids, sp, depth)
    hits = []
    for i in range(len(pick)):
        want = set(exact_ids[i][e_valid[i]].tolist())
        if want:
            got = set(approx_ids[i][a_valid[i]].tolist())
            hits.append(len(want & got) / len(want))
    return float(np.mean(hits)) if hits else 1.0


def kmeans(
    x: torch.Tensor, k: int, *, seed: int = 0, niter: int = 20, spherical: bool = False
) -> torch.Tensor:
    """(N,) cluster of every row of ``x`` after ``faiss.Kmeans`` (k capped at N), on ``x``'s device."""
    faiss = import_faiss()
    x, k = kmeans_input(x, k, spherical)
    n = len(x)
    data = _numpy(x)
    km = faiss.Kmeans(
        data.shape[1],
        k,
        niter=int(niter),
        seed=int(seed),
        spherical=spherical,
        max_points_per_centroid=n,  # train on every point, as the torch k-means does
        min_points_per_centroid=1,  # few points per class is normal here: no advisory warning
        verbose=False,
    )
    if use_gpu(x.device):
        km.index = _to_gpu(km.index, x.device)
    km.train(data)
    _, assign = km.index.search(data, 1)
    return torch.from_numpy(assign[:, 0]).to(x.device)
