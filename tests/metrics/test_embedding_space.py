"""dists@* and rho_spectrum@*: brute-force loops, numpy/scipy SVD and entropy, known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

import metrics
from tests.metrics.test_retrieval import clustered

DISTS = ["dists@intra", "dists@inter", "dists@intra_over_inter"]
RHO = ["rho_spectrum@0", "rho_spectrum@1", "rho_spectrum@2", "rho_spectrum@10", "rho_spectrum@-1"]


def brute_dists(x, y):
    z = x.double().numpy()
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-300)
    y = y.numpy()
    intra = []
    for c in np.unique(y):
        m = z[y == c]
        pairs = [1 - m[i] @ m[j] for i in range(len(m)) for j in range(len(m)) if i != j]
        if pairs:
            intra.append(np.mean(pairs))
    mus = []
    for c in np.unique(y):
        mu = z[y == c].mean(0)
        mus.append(mu / np.linalg.norm(mu))
    inter = np.mean([1 - a @ b for i, a in enumerate(mus) for j, b in enumerate(mus) if i != j])
    return float(np.mean(intra)), float(inter)


def test_dists_equal_brute_force_with_singleton_classes():
    x, y = clustered(n_classes=9, dim=5, seed=1, min_size=1, max_size=6)
    assert (torch.bincount(y) == 1).any()
    intra, inter = brute_dists(x, y)
    r = metrics.compute(DISTS, x, y)
    assert r["dists@intra"] == pytest.approx(intra, abs=1e-6)  # float32 normalisation
    assert r["dists@inter"] == pytest.approx(inter, abs=1e-6)  # float32 normalisation
    assert r["dists@intra_over_inter"] == pytest.approx(intra / inter, abs=1e-6)  # float32 normalisation


def test_dists_known_answer():
    # class 0: two orthogonal unit vectors (distance 1); class 1: two opposite vectors of e3
    # centres: normalise((e1+e2)/2) and normalise(0) = 0 -> cosine 0 -> inter distance 1
    x = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, -3.0]])
    y = torch.tensor([0, 0, 1, 1])
    r = metrics.compute(DISTS, x, y)
    assert r["dists@intra"] == pytest.approx((1.0 + 2.0) / 2)
    assert r["dists@inter"] == pytest.approx(1.0)
    # only singletons: intra is undefined (NaN), inter is defined
    r = metrics.compute(DISTS, x, torch.arange(4))
    assert math.isnan(r["dists@intra"]) and not math.isnan(r["dists@inter"])
    assert math.isnan(metrics.compute(["dists@inter"], x, torch.zeros(4, dtype=torch.long))["dists@inter"])


def test_rho_spectrum_equals_numpy_svd_and_scipy_entropy():
    x, y = clustered(n_classes=20, dim=12, seed=2)
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    r = metrics.compute(RHO, x, y)
    assert np.allclose(r["rho_spectrum@0"], s / s.sum(), atol=1e-10)
    assert sum(r["rho_spectrum@0"]) == pytest.approx(1.0)
    for m in (1, 2, 10):
        t = s[m - 1 :]
        u = np.full(len(t), 1 / len(t))
        assert r[f"rho_spectrum@{m}"] == pytest.approx(entropy(u, t / t.sum()), abs=1e-9)
    assert r["rho_spectrum@-1"] == pytest.approx(entropy(s / s.sum(), np.full(len(s), 1 / len(s))), abs=1e-9)
    # the array is compact in a formatted log line and a list in JSON
    assert f"{r['rho_spectrum@0']:.4f}" == "array(12)"
    assert metrics.is_array(r["rho_spectrum@0"]) and not metrics.is_array(r["rho_spectrum@2"])


def test_rho_spectrum_edge_cases():
    # a flat spectrum: rho = 0; rank deficient: KL(u || s) = inf (true value), KL(s || u) finite
    r = metrics.compute(["rho_spectrum@1", "rho_spectrum@-1"], torch.eye(4) * 3, torch.arange(4))
    assert r["rho_spectrum@1"] == pytest.approx(0.0, abs=1e-12)
    x = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]])
    r = metrics.compute(["rho_spectrum@1", "rho_spectrum@-1", "rho_spectrum@9"], x, torch.tensor([0, 0, 1]))
    assert r["rho_spectrum@1"] == math.inf and math.isfinite(r["rho_spectrum@-1"])
    assert math.isnan(r["rho_spectrum@9"])  # fewer than 9 singular values
    # N < D: only N singular values exist
    r = metrics.compute(["rho_spectrum@0"], torch.randn(3, 10), torch.tensor([0, 1, 1]))
    assert len(r["rho_spectrum@0"]) == 3


def test_full_default_list_runs_and_each_shared_result_is_computed_once(monkeypatch):
    from evaluation.options import DEFAULT_METRICS
    from metrics import context, ranking

    calls = {"ranking": 0, "kmeans": 0}
    real_ranks, real_kmeans = ranking.relevant_ranks, context._kmeans.kmeans

    def counting_ranks(*a, **kw):
        calls["ranking"] += 1
        return real_ranks(*a, **kw)

    def counting_kmeans(*a, **kw):
        calls["kmeans"] += 1
        return real_kmeans(*a, **kw)

    monkeypatch.setattr(ranking, "relevant_ranks", counting_ranks)
    monkeypatch.setattr(context._kmeans, "kmeans", counting_kmeans)
    x, y = clustered(n_classes=10, dim=16, seed=3)  # D >= 10 for rho_spectrum@10
    x = torch.nn.functional.normalize(x, dim=1)  # unit norm: the cosine view shares the search
    timings: dict = {}
    r = metrics.compute([*DEFAULT_METRICS, "c_recall@1"], x, y, timings=timings)
    assert set(r) == {*DEFAULT_METRICS, "c_recall@1"}
    assert calls == {"ranking": 1, "kmeans": 1}
    assert {"ranking", "kmeans", "svd"} <= set(timings)
    assert all(isinstance(v, float) and not math.isnan(v) for k, v in r.items() if k != "rho_spectrum@0")
