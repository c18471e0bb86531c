"""The faiss backend: the exact kNN search gives the exact pass's numbers for every metric it
serves, refuses the others before any search; approximate indexes report their recall against
exact search; faiss k-means is seeded and close to the torch k-means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import metrics
from metrics import faiss_search
from metrics.context import EvalContext
from metrics.ranking import PAD, check_backend, faiss_gpus
from tests.conftest import requires_cuda
from tests.metrics.test_retrieval import RETRIEVAL, assert_close, brute_force, clustered
from utilities.errors import ConfigError

pytest.importorskip("faiss")

SERVED = [name for name in RETRIEVAL if name not in ("mAP", "mrr")]
# metrics whose depth (the largest R here) stays below the gallery: relevant items beyond it exist
SHALLOW = ["e_recall@1", "e_recall@4", "c_recall@2", "precision@5", "r_precision", "mAP@R", "mAP_c"]


def _masks(n, seed):
    rng = np.random.default_rng(seed)
    q = torch.tensor(rng.random(n) < 0.5)
    g = torch.tensor(rng.random(n) < 0.7) | ~q  # overlap: some queries are in the gallery
    return q, g


def _exact_and_faiss(names, x, y, **kw):
    exact = {b: metrics.compute(names, x, y, backend=b, **kw) for b in ("numba", "torch")}
    assert exact["numba"] == exact["torch"]
    return exact["numba"], metrics.compute(names, x, y, backend="faiss", **kw)


# -- exact search: the same numbers -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery"])
@pytest.mark.parametrize("unit_norm", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_flat_search_gives_the_exact_numbers(protocol, unit_norm, seed):
    x, y = clustered(n_classes=40, dim=16, seed=seed, max_size=12)
    if unit_norm:  # one search serves both views
        x = torch.nn.functional.normalize(x, dim=1)
    else:  # lengths that differ a lot: the cosine view is a search of its own
        x = x * torch.rand(len(x), 1, generator=torch.Generator().manual_seed(seed)).add(0.2) * 5
    kw = {}
    if protocol == "query_gallery":
        kw["query_mask"], kw["gallery_mask"] = _masks(len(y), seed)
    want, got = _exact_and_faiss(SERVED, x, y, **kw)
    assert got == want  # bit-identical floats, every metric
    # and against the formulas by explicit loops
    assert_close(got, brute_force(x, y, SERVED, kw.get("query_mask"), kw.get("gallery_mask")))


@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery"])
def test_relevant_items_beyond_the_search_depth(protocol):
    # poorly separated classes of 20-40: many relevant items rank beyond the depth (the largest R)
    x, y = clustered(n_classes=6, dim=4, seed=9, min_size=20, max_size=40, spread=3.0)
    x = x * torch.linspace(0.5, 3.0, len(x))[:, None]  # not unit-norm: a separate cosine search
    kw = {}
    if protocol == "query_gallery":
        kw["query_mask"], kw["gallery_mask"] = _masks(len(y), 4)
    want, got = _exact_and_faiss(SHALLOW, x, y, **kw)
    assert got == want
    ctx = EvalContext(x, y, backend="faiss", **kw)
    ctx.request_ranks(ctx.max_relevant)
    ctx.request_depth(ctx.max_relevant)
    n_g = len(ctx.gallery_idx)
    assert ctx.max_relevant < n_g - 1
    ranks = ctx.ranks()
    beyond = ranks == faiss_search.missing(n_g)
    assert beyond.any()  # the sentinel was used ...
    exact = EvalContext(x, y, backend="torch", **kw)
    exact.request_ranks(exact.max_relevant)
    exact_ranks = exact.ranks()
    assert (exact_ranks[beyond] > ctx.max_relevant).all()  # ... exactly where the true rank is deeper
    assert torch.equal(ranks[~beyond], exact_ranks[~beyond])


def test_truncated_aps_search_1000_and_1023_deep():
    # the line of test_truncation_at_rank_1000_and_1023: class-0 items at ranks 1, 1010, 1050
    n = 1100
    x = torch.arange(n, dtype=torch.float32)[:, None]
    y = torch.arange(n)
    y[[0, 1, 1010, 1050]] = 0
    q = torch.zeros(n, dtype=torch.bool)
    q[[0, 1, 1050, 7]] = True
    names = ["mAP_1000", "mAP_lim", "mAP@R", "e_recall@1000"]
    want = brute_force(x, y, names, q, torch.ones(n, dtype=torch.bool))
    got = metrics.compute(names, x, y, query_mask=q, backend="faiss")
    assert_close(got, want)
    assert got == metrics.compute(names, x, y, query_mask=q, backend="numba")
    one = metrics.compute(["mAP_1000"], x, y, query_mask=torch.arange(n) == 0, backend="faiss")
    assert one["mAP_1000"] == pytest.approx(1 / 3)  # rank 1010 is beyond the depth 1000: a miss


def test_ties_duplicates_and_self_exclusion_by_index():
    # integer grid points: many exact distance ties, resolved by index as in the exact pass
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.integers(0, 3, size=(60, 2)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 4, 60))
    names = ["e_recall@1", "e_recall@4", "precision@3", "r_precision", "mAP@R", "mAP_1000"]
    assert_close(metrics.compute(names, x, y, backend="faiss"), brute_force(x, y, names))
    # five identical points: the query never finds itself; the tied others come in index order
    ctx = EvalContext(torch.zeros(5, 3), torch.tensor([0, 1, 1, 0, 0]), backend="faiss")
    ctx.request_ranks(2)
    ctx.request_depth(4)
    assert ctx.ranks().tolist() == [[3, 4], [2, PAD], [2, PAD], [1, 4], [1, 4]]
    # a duplicate of the query (another index, distance 0) is a legitimate result
    x = torch.tensor([[0.0], [0.0], [5.0]])
    assert metrics.compute(["e_recall@1"], x, torch.tensor([0, 0, 1]), backend="faiss") == {
        "e_recall@1": pytest.approx(2 / 3)
    }
    # queries in and out of the gallery: only the query itself is excluded
    x = torch.tensor([[0.0], [0.0], [3.0], [3.1]])
    q = torch.tensor([True, True, False, True])
    g = torch.tensor([True, True, True, False])
    ctx = EvalContext(x, torch.tensor([0, 1, 1, 0]), query_mask=q, gallery_mask=g, backend="faiss")
    ctx.request_ranks(1)
    ctx.request_depth(3)
    assert ctx.ranks()[:, 0].tolist() == [PAD, 2, 2]


def test_ranks_from_knn_by_hand():
    # gallery labels by position; query 0 (label 0) is gallery item 2, query 1 (label 1) is not in it
    g_labels = torch.tensor([0, 1, 0, 0, 1, 0])
    ids = torch.tensor([[2, 3, 1, 0, 5], [4, 1, 0, -1, -1]])  # -1: faiss found no more
    ranks = faiss_search.ranks_from_knn(
        ids,
        self_pos=torch.tensor([2, -1]),
        q_labels=torch.tensor([0, 1]),
        g_labels=g_labels,
        n_relevant=torch.tensor([3, 2]),
        depth=3,
        width=4,
        n_gallery=6,
    )
    # query 0: itself dropped, list 3, 1, 0 (depth 3): relevant 3 -> rank 1, 0 -> rank 3; item 5
    # lies beyond the depth; query 1: 4 -> 1, 1 -> 2
    assert ranks.tolist() == [[1, 3, 7, PAD], [1, 2, PAD, PAD]]


# -- refusals, before any search --------------------------------------------------------------------


def test_map_and_mrr_are_refused_before_any_search(monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("searched before refusing")

    monkeypatch.setattr(faiss_search, "knn_ranks", no_search)
    x, y = clustered(seed=1)
    for names, bad in ((["e_recall@1", "mAP"], "mAP needs"), (["mrr", "mAP@R", "mAP"], "mrr and mAP need")):
        with pytest.raises(ConfigError, match=bad) as err:
            metrics.compute(names, x, y, backend="faiss")
        assert "\n" not in str(err.value)
        assert str(err.value).endswith("use --eval_backend auto, numba or torch")
        with pytest.raises(ValueError, match=bad):
            metrics.check_faiss_request(names, "faiss", "flat")
    # the exact backends serve them; clustering and spectrum metrics are unaffected by faiss
    assert metrics.check_faiss_request(["mAP", "mrr"], "auto", "flat") is None
    monkeypatch.undo()
    r = metrics.compute(["e_recall@1", "nmi", "dists@intra", "rho_spectrum@2"], x, y, backend="faiss")
    assert r == metrics.compute(["e_recall@1", "nmi", "dists@intra", "rho_spectrum@2"], x, y)


def test_bad_index_requests_are_one_line_errors():
    check = metrics.check_faiss_request
    with pytest.raises(ConfigError, match="use --eval_backend faiss"):
        check(["e_recall@1"], "numba", "ivf")
    with pytest.raises(ConfigError, match="unknown faiss index 'ivfx'"):
        check(["e_recall@1"], "faiss", "ivfx")
    with pytest.raises(ConfigError, match="unknown faiss index parameter 'probes'"):
        check(["e_recall@1"], "faiss", "ivf", index_params={"probes": 3})
    with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
        check(["e_recall@1"], "faiss", "ivf", index_params={"nprobe": 0})
    with pytest.raises(ConfigError, match="unknown metric"):
        check(["recall@1"], "faiss", "flat")
    # one dict of flag values serves every index: each reads its own keys
    params = {"nlist": 8, "nprobe": 2, "M": 8, "efSearch": 16, "m": 4}
    for index in faiss_search.INDEXES:
        check(["e_recall@1"], "faiss", index, index_params=params)
    x, y = clustered(n_classes=30, dim=6, seed=2)
    with pytest.raises(ValueError, match="at least 256 gallery items"):
        metrics.compute(["e_recall@1"], x, y, backend="faiss", index="ivfpq")
    x, y = clustered(n_classes=80, dim=6, seed=2, min_size=4, max_size=8)
    with pytest.raises(ValueError, match="must divide the dimension 6"):
        metrics.compute(["e_recall@1"], x, y, backend="faiss", index="ivfpq", index_params={"m": 4})
    with pytest.raises(ValueError, match="recall_sample"):
        metrics.compute(["e_recall@1"], x, y, backend="faiss", index="ivf", recall_sample=0)
    with pytest.raises(ValueError, match="unknown k-means implementation"):
        metrics.compute(["nmi"], x, y, kmeans="sklearn")


def test_faiss_on_cuda_needs_a_gpu_build():
    check_backend("faiss", torch.device("cpu"))
    if faiss_gpus() > 0:
        check_backend("faiss", torch.device("cuda"))
    else:
        with pytest.raises(ValueError, match="faiss GPU build"):
            check_backend("faiss", torch.device("cuda"))


def test_defaults_follow_the_gallery_and_the_dimension():
    assert faiss_search.default_nlist(20_000) == 512  # 4·√G = 566, capped by G/39
    assert faiss_search.default_nlist(200_000) == 1789  # 4·√G
    assert faiss_search.default_nlist(10) == 1
    assert [faiss_search.default_pq_m(d) for d in (128, 32, 50, 7)] == [16, 16, 10, 7]
    p = faiss_search.resolve_params("ivf", {"nlist": 4, "nprobe": 16, "M": 3}, 1000, 8)
    assert p == {"nlist": 4, "nprobe": 4}  # nprobe capped by nlist; M is hnsw's


# -- approximate indexes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_split():
    """N ≈ 20k, D = 32, ~2000 classes; its exact Recall@1 is about 0.97."""
    x, y = clustered(n_classes=2000, dim=32, seed=0, min_size=2, max_size=18, spread=0.65)
    names = ["e_recall@1", "e_recall@4"]
    return x, y, names, metrics.compute(names, x, y, backend="faiss")


@pytest.mark.parametrize("index", ["ivf", "hnsw", "ivfpq"])
def test_approximate_index_reports_its_recall_and_stays_close(large_split, index):
    x, y, names, exact = large_split
    assert len(y) > 19_000 and 0.9 < exact["e_recall@1"] < 0.99
    timings: dict[str, float] = {}
    got = metrics.compute(names, x, y, backend="faiss", index=index, timings=timings)
    assert set(got) == {*names, "search_recall@4"}  # the depth: e_recall@4
    assert got["search_recall@4"] >= 0.9, got
    assert abs(got["e_recall@1"] - exact["e_recall@1"]) <= 0.02, (got, exact)
    assert {"faiss_index", "ranking", "search_recall"} <= set(timings)
    assert "search_recall@4" not in exact and not any(map(metrics.is_search_recall, exact))


@pytest.mark.parametrize("index", ["ivf", "ivfpq"])
def test_trained_indexes_are_seeded(index):
    x, y = clustered(n_classes=400, dim=16, seed=3, min_size=2, max_size=12, spread=1.0)
    params = {"nlist": 16, "nprobe": 2, "m": 4}

    def run(seed):
        ctx = EvalContext(x, y, seed=seed, backend="faiss", index=index, index_params=params)
        ctx.request_ranks(4)
        ctx.request_depth(8)
        return ctx.ranks(), ctx.search_recall

    a, b = run(0), run(0)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert 0 < a[1]["search_recall@8"] < 1  # a real approximation: nprobe 2 of 16
    # the seed reaches faiss's training: the coarse centroids depend on it
    g = np.ascontiguousarray(x.numpy())
    p = faiss_search.resolve_params(index, params, len(g), g.shape[1])

    def centroids(seed):
        built = faiss_search.build_index(index, g, p, seed)  # kept alive: it owns what is read below
        ivf = faiss_search.import_faiss().extract_index_ivf(built)
        return ivf.quantizer.reconstruct_n(0, p["nlist"])

    assert np.array_equal(centroids(1), centroids(1))
    assert not np.array_equal(centroids(1), centroids(2))


def test_search_recall_is_the_overlap_with_exact_search_on_a_seeded_sample():
    x, y = clustered(n_classes=200, dim=8, seed=4, min_size=2, max_size=10, spread=1.0)
    params = {"nlist": 20, "nprobe": 1}
    q, g = _masks(len(y), 4)

    def recall(sample, seed=0):
        ctx = EvalContext(
            x, y, query_mask=q, gallery_mask=g, backend="faiss", index="ivf", index_params=params, seed=seed
        )
        ctx.request_ranks(1)
        ctx.request_depth(5)
        ctx.ranks()
        return ctx.search_recall["search_recall@5"]

    # every query: recompute by hand from faiss's IVF lists and a float64 exact ranking
    q_idx, g_idx = torch.nonzero(q).flatten(), torch.nonzero(g).flatten()
    gallery = np.ascontiguousarray(x[g_idx].numpy())
    built = faiss_search.build_index(
        "ivf", gallery, faiss_search.resolve_params("ivf", params, len(g_idx), 8), 0
    )
    _, approx = built.search(np.ascontiguousarray(x[q_idx].numpy()), 6)
    d = torch.cdist(x[q_idx].double(), x[g_idx].double())
    d[q_idx[:, None] == g_idx[None, :]] = math.inf  # the query itself
    exact = torch.topk(d, 5, largest=False).indices
    own = {int(i): j for j, i in enumerate(g_idx.tolist())}
    hits = []
    for row, qi in enumerate(q_idx.tolist()):
        found = [int(a) for a in approx[row] if a >= 0 and a != own.get(qi, -2)][:5]
        hits.append(len(set(found) & set(exact[row].tolist())) / 5)
    assert recall(len(q_idx)) == pytest.approx(float(np.mean(hits)))
    assert recall(10**6) == recall(len(q_idx))  # a sample larger than the queries: all of them
    assert recall(50) == recall(50)  # the sample is seeded
    assert recall(50, seed=0) != recall(50, seed=3)
    assert 0 < recall(len(q_idx)) < 1


def test_separate_cosine_search_reports_its_own_recall():
    x, y = clustered(n_classes=300, dim=8, seed=6, min_size=2, max_size=10)
    x = x * torch.linspace(0.5, 2.0, len(x))[:, None]
    r = metrics.compute(["e_recall@2", "c_recall@1"], x, y, backend="faiss", index="hnsw")
    assert {"search_recall@2", "search_recall@1_cosine"} <= set(r)
    assert all(metrics.is_search_recall(k) for k in ("search_recall@2", "search_recall@1_cosine"))
    unit = metrics.compute(
        ["e_recall@2", "c_recall@1"],
        torch.nn.functional.normalize(x, dim=1),
        y,
        backend="faiss",
        index="hnsw",
    )
    assert [k for k in unit if metrics.is_search_recall(k)] == ["search_recall@2"]  # one search


# -- k-means --------------------------------------------------------------------------------------


def test_faiss_kmeans_is_seeded_and_close_to_the_torch_kmeans():
    x, y = clustered(n_classes=30, dim=16, seed=3, min_size=20, max_size=60, spread=0.05)
    names = ["nmi", "c_nmi"]
    faiss_runs = [metrics.compute(names, x, y, seed=s, kmeans="faiss") for s in range(5)]
    assert faiss_runs[0] == metrics.compute(names, x, y, seed=0, kmeans="faiss")  # deterministic
    assert len({r["nmi"] for r in faiss_runs}) > 1  # and the seed matters
    torch_runs = [metrics.compute(names, x, y, seed=s) for s in range(5)]
    for name in names:
        mean_faiss = np.mean([r[name] for r in faiss_runs])
        mean_torch = np.mean([r[name] for r in torch_runs])
        assert mean_faiss > 0.9 and abs(mean_faiss - mean_torch) < 0.02, (name, mean_faiss, mean_torch)
    a = faiss_search.kmeans(x, 30, seed=1)
    assert a.dtype == torch.long and a.shape == (len(x),) and int(a.max()) < 30
    assert faiss_search.kmeans(torch.randn(3, 2), 5).max() <= 2  # k capped at N
    # the exact ranking backends keep the torch k-means whatever the search backend
    assert metrics.compute(["nmi"], x, y, backend="faiss") == metrics.compute(["nmi"], x, y)


@requires_cuda
def test_faiss_on_cuda_equals_cpu():
    if faiss_gpus() == 0:
        pytest.skip("needs a faiss GPU build")
    x, y = clustered(n_classes=40, dim=16, seed=2)
    cpu = metrics.compute(SERVED, x, y, backend="faiss")
    gpu = metrics.compute(SERVED, x.cuda(), y.cuda(), device="cuda", backend="faiss")
    assert_close(gpu, cpu, tol=1e-6)


def test_tied_results_are_put_in_position_order():
    class Shuffled:  # an index that returns equal distances out of position order
        def search(self, queries, k):
            d = np.array([[0.5, 1.0, 1.0, 1.0, np.finfo(np.float32).max]], dtype=np.float32)
            return d, np.array([[7, 9, 2, 5, -1]])

    dist, ids = faiss_search._search(Shuffled(), np.zeros((1, 2), np.float32), 5)
    assert ids.tolist() == [[7, 2, 5, 9, -1]]
    assert dist.tolist()[0][:4] == [0.5, 1.0, 1.0, 1.0]
