"""k-means and the clustering metrics: scikit-learn and pytorch-metric-learning as oracles,
pair counting by brute force, known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

import metrics
from metrics.clustering import ami, expected_mutual_information, nmi, pair_f1
from metrics.context import EvalContext
from metrics.kmeans import kmeans, nearest_two
from tests.metrics.test_retrieval import clustered


def test_nmi_equals_sklearn_arithmetic_on_random_partitions():
    rng = np.random.default_rng(0)
    for n_y, n_k in [(2, 2), (5, 9), (30, 12)]:
        y, k = rng.integers(0, n_y, 300), rng.integers(0, n_k, 300)
        assert nmi(y, k) == pytest.approx(
            normalized_mutual_info_score(y, k, average_method="arithmetic"), abs=1e-12
        )
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0  # both trivial
    assert nmi(np.arange(4), np.zeros(4)) == 0.0  # one cluster tells nothing
    assert nmi(np.array([0, 0, 1, 1]), np.array([7, 7, 3, 3])) == pytest.approx(1.0)  # relabelled


def test_ami_equals_sklearn_on_random_and_degenerate_partitions():
    rng = np.random.default_rng(2)
    for _ in range(150):
        n = int(rng.integers(2, 250))
        y, k = rng.integers(0, rng.integers(1, 30), n), rng.integers(0, rng.integers(1, 30), n)
        if rng.random() < 0.3:  # close to the truth: the AMI is large
            k = np.where(rng.random(n) < 0.2, 0, y)
        assert ami(y, k) == pytest.approx(adjusted_mutual_info_score(y, k), abs=1e-10)
    for y, k in [
        (np.zeros(5), np.zeros(5)),  # both trivial: 1
        (np.arange(4), np.zeros(4)),  # one cluster: 0
        (np.arange(2), np.arange(2) + 3),  # identical all-singleton partitions (0/0): 1
        (np.array([0, 0, 1, 1, 2]), np.array([5, 5, 4, 4, 9])),  # identical up to names: 1
    ]:
        assert ami(y, k) == pytest.approx(adjusted_mutual_info_score(y, k), abs=1e-12)


def test_expected_mi_grouped_by_sizes_equals_the_pairwise_sum():
    # SOP-like: many small classes of few distinct sizes, clusters of many sizes
    rng = np.random.default_rng(3)
    a = rng.integers(2, 13, 150)
    b = np.bincount(rng.integers(0, 120, a.sum()))
    b = b[b > 0]
    n = int(a.sum())
    from math import lgamma as gammaln

    brute = 0.0
    for ai in a:
        for bj in b:
            for m in range(max(1, ai + bj - n), min(ai, bj) + 1):
                log_p = (
                    gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1) + gammaln(n - bj + 1)
                    - gammaln(n + 1) - gammaln(m + 1) - gammaln(ai - m + 1) - gammaln(bj - m + 1)
                    - gammaln(n - ai - bj + m + 1)
                )  # fmt: skip
                brute += m / n * np.log(n * m / (ai * bj)) * np.exp(log_p)
    assert expected_mutual_information(a, b) == pytest.approx(brute, rel=1e-10)


def test_pair_f1_equals_brute_force_pair_counting():
    rng = np.random.default_rng(1)
    y, k = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
    tp = same_cluster = same_class = 0
    for i, j in itertools.combinations(range(40), 2):
        same_class += y[i] == y[j]
        same_cluster += k[i] == k[j]
        tp += (y[i] == y[j]) and (k[i] == k[j])
    p, r = tp / same_cluster, tp / same_class
    assert pair_f1(y, k) == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    assert pair_f1(np.arange(5), np.arange(5)) == 0.0  # no pair anywhere: no true positive
    assert pair_f1(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)


def test_kmeans_equals_sklearn_lloyd_from_the_same_initialisation():
    from sklearn.cluster import KMeans

    x, _ = clustered(n_classes=10, dim=4, seed=2, min_size=5, max_size=20, spread=1.5)
    k, seed = 10, 3
    ours = kmeans(x, k, seed=seed, niter=50).numpy()
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]].double().numpy()
    theirs = KMeans(k, init=init, n_init=1, max_iter=51, tol=0.0, algorithm="lloyd").fit_predict(
        x.double().numpy()
    )
    assert normalized_mutual_info_score(ours, theirs) == pytest.approx(1.0)
    assert np.array_equal(kmeans(x, k, seed=seed, niter=50, chunk=7).numpy(), ours)


def test_numba_nearest_two_and_kmeans_equal_the_torch_path():
    x, _ = clustered(n_classes=30, dim=8, seed=5, min_size=3, max_size=15)
    c = x[:12].clone()
    c[5] = c[2]  # duplicate centroids: a tie for the points nearest to them (lower index wins)
    c[9] = c[2]
    for chunk in (None, 7):
        ref = nearest_two(x, c, chunk, backend="torch")
        got = nearest_two(x, c, chunk, backend="numba")
        assert torch.equal(got[0], ref[0]) and (got[0] != 5).all() and (got[0] != 9).all()
        assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
        # a tie makes the second-nearest distance equal to the nearest one
        tied = ref[0] == 2
        assert tied.any() and torch.equal(ref[1][tied], ref[2][tied])
    one = nearest_two(x, c[:1], backend="numba")
    assert (one[0] == 0).all() and torch.isinf(one[2]).all()
    for spherical in (False, True):
        want = kmeans(x, 30, seed=2, spherical=spherical, backend="torch")
        assert torch.equal(kmeans(x, 30, seed=2, spherical=spherical, backend="numba"), want)


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    x, y = clustered(n_classes=6, dim=8, seed=4, min_size=3, max_size=8, spread=0.01)
    # random initialisation (as faiss / the study) may put two seeds in one blob; seed 4 does not
    r = metrics.compute(["nmi", "f1", "c_nmi", "c_f1", "ami"], x, y, seed=4)
    assert all(v == pytest.approx(1.0) for v in r.values())
    x, y = clustered(n_classes=20, dim=8, seed=5, spread=2.0)
    a = kmeans(x, 20, seed=1)
    assert torch.equal(a, kmeans(x, 20, seed=1))
    assert not torch.equal(a, kmeans(x, 20, seed=2))


def test_k_is_the_number_of_classes_of_the_split():
    x, y = clustered(n_classes=7, dim=4, seed=6, min_size=2)
    ctx = EvalContext(x, y * 10 + 3)  # arbitrary class ids
    assert ctx.n_classes == 7
    assert len(torch.unique(ctx.clusters())) <= 7
    # more clusters than samples is impossible: k is capped at N
    assert kmeans(torch.randn(3, 2), 5).max() <= 2


def test_spherical_kmeans_ignores_the_length():
    # two directions, wildly different lengths: cosine k-means separates by direction
    x = torch.tensor([[1.0, 0.01], [50.0, 0.0], [0.2, 0.0], [0.0, 1.0], [0.01, 30.0], [0.0, 0.1]])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert metrics.compute(["c_nmi"], x, y, seed=0)["c_nmi"] == pytest.approx(1.0)


def test_nmi_and_ami_agree_with_pytorch_metric_learning_on_the_same_assignment():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = clustered(n_classes=15, dim=8, seed=8, min_size=2, max_size=12, spread=1.5)
    ctx = EvalContext(x, y, seed=4)
    assignment = ctx.clusters()

    def same_clusters(query, n_clusters):
        assert n_clusters == 15
        return assignment.clone()

    calc = AccuracyCalculator(include=("NMI", "AMI"), kmeans_func=same_clusters)
    theirs = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
    ours = metrics.compute(["nmi", "ami"], x, y, seed=4)
    assert ours["nmi"] == pytest.approx(theirs["NMI"], abs=1e-9)
    assert ours["ami"] == pytest.approx(theirs["AMI"], abs=1e-9)
    assert ours["ami"] == pytest.approx(
        adjusted_mutual_info_score(y.numpy(), assignment.numpy(), average_method="arithmetic")
    )


def plain_lloyd(x, k, seed, niter):
    """Textbook Lloyd from the same initialisation: full distance matrix every iteration."""
    gen = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=gen)[:k]].double()
    xd = x.double()
    a = torch.cdist(xd, c).argmin(1)
    for _ in range(niter):
        for j in range(k):
            if (a == j).any():
                c[j] = xd[a == j].mean(0)
        a = torch.cdist(xd, c).argmin(1)
    return a


@pytest.mark.parametrize("niter", [1, 3, 20])
def test_bounded_lloyd_equals_plain_lloyd_with_many_overlapping_clusters(niter, monkeypatch):
    from metrics import kmeans as kmeans_module

    x, _ = clustered(n_classes=60, dim=6, seed=9, min_size=2, max_size=10, spread=1.5)
    passes = []
    nearest_two = kmeans_module.nearest_two
    monkeypatch.setattr(
        kmeans_module, "nearest_two", lambda rows, *a, **kw: passes.append(len(rows)) or nearest_two(rows, *a, **kw)
    )
    assert torch.equal(kmeans(x, 60, seed=2, niter=niter), plain_lloyd(x, 60, 2, niter))
    if niter == 20:  # both kinds of iteration ran: over every row, and over the checked ones only
        assert passes.count(len(x)) > 2 and any(0 < p < len(x) / 2 for p in passes)
