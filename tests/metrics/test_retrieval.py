"""Retrieval metrics: hand-computed answers, brute-force loops from the formulas, and
pytorch-metric-learning's AccuracyCalculator as an independent oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import metrics
from metrics.ranking import BLOCK_ELEMENTS, MAX_BLOCK_ELEMENTS, PAD, auto_chunk, relevant_ranks
from tests.conftest import requires_cuda
from utilities.errors import ConfigError

RETRIEVAL = [
    "e_recall@1",
    "e_recall@2",
    "e_recall@4",
    "c_recall@1",
    "precision@1",
    "precision@3",
    "r_precision",
    "mAP@R",
    "mAP_c",
    "mAP_1000",
    "mAP_lim",
    "mAP",
    "mrr",
]


def clustered(n_classes=12, dim=8, seed=0, spread=0.7, min_size=1, max_size=9):
    """Random clustered embeddings with unequal class sizes (singletons included)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_size, max_size + 1, n_classes)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), sizes)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return torch.tensor(x[perm], dtype=torch.float32), torch.tensor(labels[perm])


def _ranking(z, q, cand):
    """Candidates ranked by (squared distance to q, index)."""
    d = [float(((z[q] - z[g]) ** 2).sum()) for g in cand]
    return [cand[i] for i in sorted(range(len(cand)), key=lambda i: (d[i], cand[i]))]


def _ap(rel, cutoff, denom):
    """Σ_{r ≤ cutoff} rel(r)·P(r) / denom, by a loop over ranks."""
    hits, total = 0, 0.0
    for r, is_rel in enumerate(rel[:cutoff], start=1):
        if is_rel:
            hits += 1
            total += hits / r
    return total / denom


def brute_force(x, y, names, query=None, gallery=None):
    """Every retrieval metric by explicit loops over queries and ranks (the documented formulas)."""
    x = x.double().numpy()
    y = y.numpy()
    n = len(y)
    query = range(n) if query is None else np.flatnonzero(query.numpy())
    gallery = np.arange(n) if gallery is None else np.flatnonzero(gallery.numpy())
    per = {name: [] for name in names}
    per_class: dict[int, list[float]] = {}
    for q in query:
        cand = [g for g in gallery if g != q]
        ranked = _ranking(x, q, cand)
        rel = [y[g] == y[q] for g in ranked]
        big_r = sum(rel)
        z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        rel_cos = [y[g] == y[q] for g in _ranking(z, q, cand)]

        def ap(cutoff, denom, rel=rel):
            return _ap(rel, cutoff, denom)

        for name in names:
            family, _, p = name.partition("@")
            if name == "mAP@R":
                family = "mAP@R"
            if family == "e_recall":
                per[name].append(float(any(rel[: int(p)])))
            elif family == "c_recall":
                per[name].append(float(any(rel_cos[: int(p)])))
            elif big_r == 0:
                continue
            elif family == "precision":
                per[name].append(sum(rel[: int(p)]) / min(int(p), len(cand)))
            elif family == "r_precision":
                per[name].append(sum(rel[:big_r]) / big_r)
            elif family in ("mAP@R", "mAP_c"):
                per[name].append(ap(big_r, big_r))
                if family == "mAP_c":
                    per_class.setdefault(int(y[q]), []).append(per[name][-1])
            elif family == "mAP_1000":
                per[name].append(ap(1000, min(1000, big_r)))
            elif family == "mAP_lim":
                per[name].append(ap(1023, min(1023, big_r)))
            elif family == "mAP":
                per[name].append(ap(len(cand), big_r))
            elif family == "mrr":
                per[name].append(1.0 / (rel.index(True) + 1))
    out = {name: (float(np.mean(v)) if v else math.nan) for name, v in per.items()}
    if "mAP_c" in names and per_class:
        out["mAP_c"] = float(np.mean([np.mean(v) for v in per_class.values()]))
    return out


def assert_close(got: dict, want: dict, tol=1e-9):
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, abs=tol), name


# -- hand-computed answers ------------------------------------------------------------------------


def test_known_answers_on_a_line():
    # 1-D points; distances are obvious. labels: a a b b a
    x = torch.tensor([[0.0], [1.0], [3.0], [4.5], [10.0]])
    y = torch.tensor([0, 0, 1, 1, 0])
    # neighbour order (by distance): 0: 1,2,3,4   1: 0,2,3,4   2: 3,1,0,4   3: 2,1,0,4   4: 3,2,1,0
    r = metrics.compute(RETRIEVAL, x, y, backend="torch")
    assert r["e_recall@1"] == pytest.approx(4 / 5)  # query 4's nearest (3) is class b
    assert r["e_recall@2"] == pytest.approx(4 / 5)  # 4: 3, 2 both b
    assert r["e_recall@4"] == pytest.approx(1.0)
    assert r["precision@1"] == pytest.approx(4 / 5)
    # precision@3: 0:[1,2,3]->1/3  1:[0,2,3]->1/3  2:[3,1,0]->1/3  3:[2,1,0]->1/3  4:[3,2,1]->1/3
    assert r["precision@3"] == pytest.approx(1 / 3)
    # R: 2,2,1,1,2 ; r_precision: 0:[1,2]->1/2 1:[0,2]->1/2 2:[3]->1 3:[2]->1 4:[3,2]->0
    assert r["r_precision"] == pytest.approx((0.5 + 0.5 + 1 + 1 + 0) / 5)
    # AP@R: 0: (1/1)/2 = .5   1: .5   2: 1   3: 1   4: 0
    assert r["mAP@R"] == pytest.approx(3 / 5)
    # class-averaged: class a (0,1,4): (.5+.5+0)/3 = 1/3; class b: 1 -> (1/3 + 1)/2
    assert r["mAP_c"] == pytest.approx((1 / 3 + 1) / 2)
    # AP@1000 / min(1000, R): 0: ranks 1 and 4 relevant -> (1 + 2/4)/2 = .75 ; 1: same .75
    # 2: rank 1 -> 1 ; 3: 1 ; 4: relevant at ranks 3, 4 -> (1/3 + 2/4)/2
    assert r["mAP_1000"] == pytest.approx((0.75 + 0.75 + 1 + 1 + (1 / 3 + 0.5) / 2) / 5)
    assert r["mAP_lim"] == pytest.approx(r["mAP_1000"])
    # untruncated AP: every relevant item is within 4 ranks here, so it equals mAP_1000
    assert r["mAP"] == pytest.approx((0.75 + 0.75 + 1 + 1 + (1 / 3 + 0.5) / 2) / 5)
    # first relevant at ranks 1, 1, 1, 1, 3
    assert r["mrr"] == pytest.approx((4 + 1 / 3) / 5)


def test_ties_rank_lower_index_first_and_self_is_excluded_by_index():
    # five identical points: all distances 0; the query itself must never be returned, and the
    # tied others come in index order (also at the k-th place)
    x = torch.zeros(5, 3)
    y = torch.tensor([0, 1, 1, 0, 0])
    # rankings: q0: 1,2,3,4  q1: 0,2,3,4  q2: 0,1,3,4  q3: 0,1,2,4  q4: 0,1,2,3
    want = [[3, 4], [2, PAD], [2, PAD], [1, 4], [1, 4]]  # PAD: no further relevant item
    for backend in ("torch", "numba"):
        ranks = relevant_ranks(x, y, torch.arange(5), torch.arange(5), 2, backend=backend)
        assert ranks.tolist() == want, backend
    r = metrics.compute(["e_recall@1"], x, y, backend="torch")
    # q0 -> 1 (miss), q1 -> 0 (miss), q2 -> 0 (miss), q3 -> 0 (hit), q4 -> 0 (hit)
    assert r["e_recall@1"] == pytest.approx(2 / 5)


def test_boundary_tie_is_resolved_by_index_in_both_backends():
    # query 0 at the origin, four items at distance 1 (indices 1..4) and one at 0.5 (index 5)
    x = torch.tensor([[0.0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [0.5, 0]])
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    for backend in ("torch", "numba"):
        # ranking of query 0: 5, 1, 2, 3, 4 -> its relevant items 2 and 4 rank 3rd and 5th
        ranks = relevant_ranks(x, y, torch.tensor([0]), torch.arange(6), 2, backend=backend)
        assert ranks.tolist() == [[3, 5]], backend


def test_duplicate_of_the_query_is_a_legitimate_result():
    x = torch.tensor([[0.0], [0.0], [5.0]])
    y = torch.tensor([0, 0, 1])
    for backend in ("torch", "numba"):
        ranks = relevant_ranks(
            x, torch.tensor([0, 1, 1]), torch.arange(3), torch.arange(3), 1, backend=backend
        )
        # item 1: its duplicate 0 (distance 0) ranks first, so item 2 is 2nd; item 2: 0 and 1
        # tie, the lower index wins, so item 1 is 2nd
        assert ranks[:, 0].tolist() == [PAD, 2, 2], backend
    assert metrics.compute(["e_recall@1"], x, y)["e_recall@1"] == pytest.approx(2 / 3)


def test_singleton_classes_count_as_recall_misses_and_are_left_out_of_precision_and_map():
    x = torch.tensor([[0.0], [0.1], [5.0]])
    y = torch.tensor([0, 0, 1])  # class 1 has a single sample
    r = metrics.compute(RETRIEVAL, x, y)
    assert r["e_recall@1"] == pytest.approx(2 / 3)
    for name in ("precision@1", "r_precision", "mAP@R", "mAP_c", "mAP_1000", "mAP_lim"):
        assert r[name] == pytest.approx(1.0), name


def test_all_singletons_give_nan_where_undefined_and_zero_recall():
    x = torch.randn(4, 3)
    r = metrics.compute(RETRIEVAL, x, torch.arange(4))
    assert r["e_recall@1"] == 0.0
    assert math.isnan(r["mAP@R"]) and math.isnan(r["precision@1"])


def test_fewer_samples_than_k():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([0, 0, 1])
    r = metrics.compute(["e_recall@1000", "precision@10", "mAP_1000", "mAP@R"], x, y)
    assert r["e_recall@1000"] == pytest.approx(2 / 3)  # the class-1 sample has no partner
    # precision@10 divides by min(10, 2 candidates): queries 0 and 1 find 1 relevant of 2
    assert r["precision@10"] == pytest.approx(0.5)
    assert r["mAP_1000"] == pytest.approx(1.0) and r["mAP@R"] == pytest.approx(1.0)
    one = metrics.compute(["e_recall@1", "mAP@R"], torch.zeros(1, 2), torch.tensor([3]))
    assert one["e_recall@1"] == 0.0 and math.isnan(one["mAP@R"])


def test_query_gallery_protocol_known_answer_with_a_class_absent_from_the_gallery():
    # gallery: items 0..3; queries: items 4..6. Query 6's class (2) is not in the gallery.
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [0.4], [10.4], [5.0]])
    y = torch.tensor([0, 0, 1, 1, 0, 1, 2])
    gallery = torch.tensor([True, True, True, True, False, False, False])
    r = metrics.compute(RETRIEVAL, x, y, query_mask=~gallery, gallery_mask=gallery)
    assert r["e_recall@1"] == pytest.approx(2 / 3)  # query 6 can never hit: a miss
    for name in ("precision@1", "r_precision", "mAP@R", "mAP_c", "mAP_1000"):
        assert r[name] == pytest.approx(1.0), name  # query 6 (R = 0) is left out


def test_query_in_the_gallery_excludes_only_itself():
    # items 0, 1 are both query and gallery; item 2 only gallery; item 3 only query
    x = torch.tensor([[0.0], [0.0], [3.0], [3.1]])
    y = torch.tensor([0, 0, 1, 1])
    q = torch.tensor([True, True, False, True])
    g = torch.tensor([True, True, True, False])
    y2 = torch.tensor([0, 1, 1, 0])
    for backend in ("torch", "numba"):
        # query 0: gallery 1, 2 hold no class-0 item but itself -> none; query 1: 2 at rank 2
        # query 3 ranks 2, 0, 1 (0 and 1 tie, the lower index first): item 0 at rank 2
        ranks = relevant_ranks(
            x, y2, torch.nonzero(q).flatten(), torch.nonzero(g).flatten(), 1, backend=backend
        )
        assert ranks[:, 0].tolist() == [PAD, 2, 2], backend
    r = metrics.compute(["e_recall@1", "mAP@R"], x, y, query_mask=q, gallery_mask=g)
    assert r["e_recall@1"] == 1.0 and r["mAP@R"] == 1.0


# -- brute force, oracles, backends ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_equals_brute_force(seed):
    x, y = clustered(seed=seed)
    want = brute_force(x, y, RETRIEVAL)
    for backend in ("torch", "numba"):
        assert_close(metrics.compute(RETRIEVAL, x, y, backend=backend), want)


def test_query_gallery_equals_brute_force():
    x, y = clustered(seed=3)
    rng = np.random.default_rng(3)
    q = torch.tensor(rng.random(len(y)) < 0.5)
    g = torch.tensor(rng.random(len(y)) < 0.7) | ~q  # overlap: some queries are in the gallery
    want = brute_force(x, y, RETRIEVAL, q, g)
    for backend in ("torch", "numba"):
        assert_close(metrics.compute(RETRIEVAL, x, y, query_mask=q, gallery_mask=g, backend=backend), want)


def test_ties_everywhere_equal_brute_force():
    # integer grid points: many exact distance ties, handled by index in every backend
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.integers(0, 3, size=(60, 2)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 4, 60))
    names = ["e_recall@1", "e_recall@4", "precision@3", "r_precision", "mAP@R", "mAP_1000"]
    want = brute_force(x, y, names)
    for backend in ("torch", "numba"):
        assert_close(metrics.compute(names, x, y, backend=backend), want)
        for chunk in (1, 7):
            assert_close(metrics.compute(names, x, y, backend=backend, chunk=chunk), want)
    idx = torch.arange(60)
    ref = relevant_ranks(x, y, idx, idx, 30, backend="torch")
    for mode in (1, 2):  # ties inside the dense and the sparse pass of the kernel
        assert torch.equal(relevant_ranks(x, y, idx, idx, 30, backend="numba", numba_mode=mode), ref)


def test_numba_equals_torch_and_chunked_equals_unchunked():
    x, y = clustered(n_classes=40, dim=16, seed=7, max_size=12)
    rng = np.random.default_rng(7)
    q = torch.nonzero(torch.tensor(rng.random(len(y)) < 0.6)).flatten()
    g = torch.nonzero(torch.tensor(rng.random(len(y)) < 0.8)).flatten()
    for query, gallery in ((torch.arange(len(y)), torch.arange(len(y))), (q, g)):
        ref = relevant_ranks(x, y, query, gallery, 12, backend="torch")
        for mode in (0, 1, 2):  # the kernel's own choice per row, all dense, all sparse
            assert torch.equal(
                relevant_ranks(x, y, query, gallery, 12, backend="numba", numba_mode=mode), ref
            )
        for chunk in (1, 13, 10**6):
            assert torch.equal(relevant_ranks(x, y, query, gallery, 12, backend="torch", chunk=chunk), ref)
            assert torch.equal(relevant_ranks(x, y, query, gallery, 12, backend="numba", chunk=chunk), ref)
        # a narrower request is the leading columns of the wide one
        assert torch.equal(relevant_ranks(x, y, query, gallery, 3, backend="numba"), ref[:, :3])


def test_ranks_equal_a_full_sort_at_depth():
    # ranks far beyond any top-k: a poorly separated split, every relevant rank checked
    x, y = clustered(n_classes=5, dim=4, seed=9, min_size=20, max_size=40, spread=3.0)
    n = len(y)
    d = torch.cdist(x.double(), x.double()).pow(2)
    d.fill_diagonal_(float("inf"))
    order = torch.from_numpy(np.lexsort((np.tile(np.arange(n), (n, 1)), d.numpy()), axis=1))
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(1, n + 1).expand(n, -1).contiguous())
    want = []
    for i in range(n):
        rel = (y == y[i]) & (torch.arange(n) != i)
        want.append(sorted(rank_of[i][rel].tolist()))
    for backend, mode in (("torch", 0), ("numba", 1), ("numba", 2)):
        got = relevant_ranks(x, y, torch.arange(n), torch.arange(n), 40, backend=backend, numba_mode=mode)
        for i in range(n):
            assert got[i, : len(want[i])].tolist() == want[i], (backend, mode, i)
            assert (got[i, len(want[i]) :] == PAD).all()
    assert max(max(w) for w in want) > n // 2  # deep ranks were exercised


def test_truncation_at_rank_1000_and_1023_against_brute_force():
    # points on a line; class 0 = items 0, 1, 1010 and 1050, every other item its own class: for
    # query 0 they rank 1st, 1010th (between the cutoffs) and 1050th (beyond both)
    n = 1100
    x = torch.arange(n, dtype=torch.float32)[:, None]
    y = torch.arange(n)
    y[[0, 1, 1010, 1050]] = 0
    q = torch.zeros(n, dtype=torch.bool)
    q[[0, 1, 1050, 7]] = True  # 7: a singleton class, a recall miss left out of the APs
    names = ["mAP_1000", "mAP_lim", "mAP", "mAP@R", "e_recall@1000", "mrr"]
    want = brute_force(x, y, names, q, torch.ones(n, dtype=torch.bool))
    for backend in ("torch", "numba"):
        got = metrics.compute(names, x, y, query_mask=q, backend=backend)
        assert_close(got, want)
    assert want["mAP"] > want["mAP_lim"] > want["mAP_1000"]  # each cutoff cuts something
    ap0 = metrics.compute(["mAP_1000", "mAP_lim", "mAP"], x, y, query_mask=torch.arange(n) == 0)
    assert ap0["mAP_1000"] == pytest.approx(1 / 3)
    assert ap0["mAP_lim"] == pytest.approx((1 + 2 / 1010) / 3)
    assert ap0["mAP"] == pytest.approx((1 + 2 / 1010 + 3 / 1050) / 3)


def test_unknown_or_misplaced_backend_is_an_error_and_auto_picks_by_size():
    from metrics.ranking import NUMBA_MIN_ELEMENTS, resolve_backend

    x, y = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="unknown ranking backend"):
        metrics.compute(["e_recall@1"], x, y, backend="annoy")
    with pytest.raises(ValueError, match="CPU tensors only"):
        resolve_backend("numba", torch.device("cuda"), 10**9)
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, NUMBA_MIN_ELEMENTS - 1) == "torch"  # tiny: no numba import
    assert resolve_backend("auto", cpu, NUMBA_MIN_ELEMENTS) == "numba"
    assert resolve_backend("auto", torch.device("cuda"), 10**9) == "torch"
    assert resolve_backend("torch", cpu, 10**9) == "torch"


def test_cosine_recall_uses_the_angle_not_the_length():
    # item 1 points the same way as the query but is far; item 2 is near but at 90 degrees
    x = torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    r = metrics.compute(["e_recall@1", "c_recall@1"], x, y)
    # euclidean: q0 -> 2 (miss), q1 -> 0 (hit), q2 -> 0 (miss); cosine: q0 -> 1 (hit), q1 -> 0, q2 -> 0
    assert r["e_recall@1"] == pytest.approx(1 / 3)
    assert r["c_recall@1"] == pytest.approx(2 / 3)


def test_agrees_with_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = clustered(n_classes=30, dim=16, seed=11, min_size=2, max_size=10, spread=1.0)
    full = AccuracyCalculator(include=("mean_average_precision", "mean_reciprocal_rank"), k=None)
    theirs = full.get_accuracy(x, y, x, y, ref_includes_query=True)
    ours = metrics.compute(["mAP", "mrr"], x, y)
    assert ours["mAP"] == pytest.approx(theirs["mean_average_precision"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(theirs["mean_reciprocal_rank"], abs=1e-6)
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count"
    )
    theirs = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
    ours = metrics.compute(["precision@1", "r_precision", "mAP@R"], x, y)
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["mAP@R"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    # a separate gallery (disjoint sets)
    q = torch.arange(len(y)) % 3 == 0
    theirs = calc.get_accuracy(x[q], y[q], x[~q], y[~q], ref_includes_query=False)
    ours = metrics.compute(["precision@1", "r_precision", "mAP@R"], x, y, query_mask=q, gallery_mask=~q)
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["mAP@R"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


@requires_cuda
def test_cuda_equals_cpu():
    x, y = clustered(n_classes=40, dim=16, seed=2)
    names = [*RETRIEVAL, "nmi", "f1", "dists@intra", "rho_spectrum@2"]
    cpu = metrics.compute(names, x, y, backend="numba", seed=3)
    gpu = metrics.compute(names, x.cuda(), y.cuda(), device="cuda", seed=3)
    assert_close(gpu, cpu, tol=1e-6)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "recall@1",
        "e_recall",
        "e_recall@0",
        "e_recall@x",
        "mAP@R@2",
        "dists@foo",
        "rho_spectrum",
        "rho_spectrum@a",
        "nmi@2",
        "precision",
    ],
)
def test_bad_metric_names_are_config_errors(name):
    with pytest.raises(ConfigError):
        metrics.parse(name)


def test_bad_inputs_fail_early_and_clearly():
    x, y = torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.compute(["e_recall@1"], x.index_fill(0, torch.tensor([1]), float("nan")), y)
    with pytest.raises(ValueError, match="labels"):
        metrics.compute(["e_recall@1"], x, y[:4])
    with pytest.raises(ValueError, match="query_mask"):
        metrics.compute(["e_recall@1"], x, y, query_mask=torch.ones(5))
    with pytest.raises(ValueError, match="non-empty"):
        metrics.compute(["e_recall@1"], x, y, gallery_mask=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        metrics.compute(["e_recall@1"], torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_row_blocks_are_16_mb_with_a_floor_of_128_rows_up_to_128_mb():
    assert auto_chunk(5924, None) == BLOCK_ELEMENTS // 5924 == 708  # CUB: 16 MB blocks
    assert auto_chunk(60502, None) == 128 and auto_chunk(136093, None) == 128  # SOP, iNat: the floor
    assert auto_chunk(2_000_000, None) == MAX_BLOCK_ELEMENTS // 2_000_000 == 16  # memory stays bounded
    assert auto_chunk(10**9, None) == 1 and auto_chunk(0, None) == BLOCK_ELEMENTS
    assert auto_chunk(136093, 30) == 30  # --eval_chunk wins
