"""erc_recall@k, erc_mAP@R, confidence_accuracy, confidence_hist: hand-computed cases, brute-force
loops over the ranking, sklearn's ROC (the paper's confidence accuracy), numpy's histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

import metrics
from metrics.uncertainty import best_threshold_accuracy, erc_area, histogram
from tests.metrics.test_retrieval import _ap, _ranking, clustered
from utilities.errors import ConfigError

UNCERTAINTY = ["erc_recall@1", "erc_mAP@R", "confidence_accuracy"]


def line(points):
    """1-D positions as (N, 2) embeddings on the x axis."""
    return torch.tensor([[p, 0.0] for p in points])


def brute_erc(errors, conf):
    """(1/n) Σ_k mean error of the k most confident (ties: lower index first), by loops."""
    order = sorted(range(len(errors)), key=lambda i: (-conf[i], i))
    return float(np.mean([np.mean([errors[i] for i in order[:k]]) for k in range(1, len(order) + 1)]))


def test_erc_area_hand_computed_and_deterministic_ties():
    errors = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # descending confidence: q0 (1), q1 (0), q3 (0), q2 (1): running means 1, 1/2, 1/3, 2/4
    assert erc_area(errors, torch.tensor([0.9, 0.8, 0.1, 0.5])) == pytest.approx(
        (1 + 1 / 2 + 1 / 3 + 2 / 4) / 4
    )
    # all tied: query order decides (1, 1/2, 2/3, 2/4), and reversing the errors changes the value
    tied = torch.full((4,), 0.5)
    assert erc_area(errors, tied) == pytest.approx((1 + 1 / 2 + 2 / 3 + 2 / 4) / 4)
    assert erc_area(errors.flip(0), tied) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    # a perfect confidence (errors last) reaches the minimum, the reverse the maximum
    rng = np.random.default_rng(0)
    e = torch.tensor(rng.random(50) < 0.3, dtype=torch.float64)
    best, worst = erc_area(e, -e), erc_area(e, e)
    for _ in range(20):
        assert best <= erc_area(e, torch.tensor(rng.random(50))) <= worst
    # ties among many equal values (stable order on a long input)
    c = torch.tensor(rng.integers(0, 3, 200), dtype=torch.float64)
    e = torch.tensor(rng.random(200))
    assert erc_area(e, c) == pytest.approx(brute_erc(e.tolist(), c.tolist()))


def test_uncertainty_metrics_hand_computed_query_gallery():
    # gallery: class A at 0 and 1, class B at 10 and 11; four queries
    #   q0 = 0.4 (A): A, A first -> hit, AP@R 1        q1 = 3 (B): A, A, B, B -> miss, AP 0
    #   q2 = 9.6 (B): B, B first -> hit, AP 1          q3 = 5.4 (A): 1 (A), 10 (B), 0 (A) -> hit, AP 1/2
    x = line([0, 1, 10, 11, 0.4, 3, 9.6, 5.4])
    y = torch.tensor([0, 0, 1, 1, 0, 1, 1, 0])
    q = torch.tensor([False] * 4 + [True] * 4)
    conf = torch.tensor([7.0, 7.0, 7.0, 7.0, 0.2, 0.9, 0.5, 0.7])  # gallery confidences are ignored
    r = metrics.compute(
        [*UNCERTAINTY, "e_recall@1", "mAP@R"], x, y, query_mask=q, gallery_mask=~q, confidence=conf
    )
    assert r["e_recall@1"] == pytest.approx(0.75) and r["mAP@R"] == pytest.approx(2.5 / 4)
    # order by confidence: q1, q3, q2, q0; recall errors 1, 0, 0, 0; AP errors 1, 1/2, 0, 0
    assert r["erc_recall@1"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert r["erc_mAP@R"] == pytest.approx((1 + 1.5 / 2 + 1.5 / 3 + 1.5 / 4) / 4)
    # "hit" iff confidence >= t: the best t predicts only the most confident query (q1) wrongly
    assert r["confidence_accuracy"] == pytest.approx(3 / 4)
    # changing gallery confidences changes nothing but the histogram
    conf2 = conf.clone()
    conf2[:4] = torch.tensor([-3.0, 100.0, 0.0, 1.0])
    r2 = metrics.compute(
        [*UNCERTAINTY, "confidence_hist"], x, y, query_mask=q, gallery_mask=~q, confidence=conf2
    )
    assert all(r2[k] == r[k] for k in UNCERTAINTY)
    assert r2["confidence_hist"][0] == -3.0 and r2["confidence_hist"][20] == 100.0


def test_erc_and_confidence_accuracy_equal_brute_force_leave_one_out():
    x, y = clustered(n_classes=15, dim=4, seed=3, spread=1.2, min_size=1, max_size=8)
    rng = np.random.default_rng(1)
    conf = torch.tensor(rng.integers(0, 6, len(y)), dtype=torch.float32)  # many ties
    z, labels = x.double().numpy(), y.numpy()
    hits, ap_err = [], []
    for i in range(len(y)):
        cand = [g for g in range(len(y)) if g != i]
        rel = [labels[g] == labels[i] for g in _ranking(z, i, cand)]
        if sum(rel):  # queries with R >= 1 only
            hits.append(float(rel[0]))
            ap_err.append(1 - _ap(rel, sum(rel), sum(rel)))
    valid = [i for i in range(len(y)) if (labels == labels[i]).sum() > 1]
    c = conf.double().numpy()[valid].tolist()
    r = metrics.compute([*UNCERTAINTY, "erc_recall@2"], x, y, confidence=conf)
    assert r["erc_recall@1"] == pytest.approx(brute_erc([1 - h for h in hits], c))
    assert r["erc_mAP@R"] == pytest.approx(brute_erc(ap_err, c))
    best = max(
        (
            sum(h for h, ci in zip(hits, c, strict=True) if ci >= t)
            + sum(1 - h for h, ci in zip(hits, c, strict=True) if ci < t)
        )
        / len(hits)
        for t in [np.inf, *c]
    )
    assert r["confidence_accuracy"] == pytest.approx(best)
    assert r["erc_recall@2"] <= r["erc_recall@1"]  # more hits at k = 2, query by query


def test_best_threshold_accuracy_ties_and_sklearn():
    # thresholds: +inf 3/6, 0.9 4/6, 0.8 3/6, 0.7 4/6, 0.3 4/6 (the tie moves together), 0.1 3/6;
    # a threshold splitting the 0.3 tie would give 5/6
    hit = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    conf = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.3, 0.1], dtype=torch.float64)
    assert best_threshold_accuracy(hit, conf) == pytest.approx(4 / 6)
    assert best_threshold_accuracy(hit.flip(0), conf.flip(0)) == pytest.approx(4 / 6)
    # the paper's formula: max over sklearn's ROC points of pr·tpr + (1 − pr)(1 − fpr)
    rng = np.random.default_rng(2)
    for _ in range(5):
        h = rng.random(300) < 0.6
        c = np.round(rng.normal(size=300) + h, 1)  # informative, with ties
        fpr, tpr, _ = roc_curve(h, c, drop_intermediate=False)
        pr = h.mean()
        expected = np.max(pr * tpr + (1 - pr) * (1 - fpr))
        assert best_threshold_accuracy(torch.tensor(h), torch.tensor(c)) == pytest.approx(expected)
    assert best_threshold_accuracy(torch.ones(4, dtype=torch.bool), torch.arange(4.0)) == 1.0
    assert best_threshold_accuracy(torch.zeros(3, dtype=torch.bool), torch.arange(3.0)) == 1.0


def test_confidence_hist_counts_and_format():
    edges, counts = histogram(torch.tensor([0.0, 1.0, 1.0, 2.0, 4.0]), bins=4)
    assert edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and counts.tolist() == [1.0, 2.0, 1.0, 1.0]
    edges, counts = histogram(torch.tensor([3.0, 3.0, 3.0]), bins=4)  # all equal: width 1 around them
    assert edges.tolist() == [2.5, 2.75, 3.0, 3.25, 3.5] and counts.tolist() == [0.0, 0.0, 3.0, 0.0]
    rng = np.random.default_rng(4)
    values = rng.lognormal(size=1000)
    edges, counts = histogram(torch.tensor(values))
    ref_counts, ref_edges = np.histogram(values, bins=metrics.uncertainty.HIST_BINS)
    np.testing.assert_allclose(edges.numpy(), ref_edges, rtol=1e-12)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    x, y = clustered(n_classes=5, dim=3, seed=0)
    r = metrics.compute(["confidence_hist"], x, y, confidence=x.norm(dim=1))
    hist = r["confidence_hist"]
    assert metrics.returns_array("confidence_hist") and metrics.is_array(hist) and len(hist) == 41
    assert f"{hist:.4f}" == "array(41)" and sum(hist[21:]) == len(y)
    assert hist[0] == pytest.approx(float(x.norm(dim=1).min())) and hist[20] == pytest.approx(
        float(x.norm(dim=1).max())
    )


def test_without_or_with_bad_confidence_fails_clearly():
    x, y = clustered(n_classes=4, dim=3, seed=0)
    for name in [*UNCERTAINTY, "confidence_hist", "erc_recall@4"]:
        with pytest.raises(ValueError, match="need per-item confidence"):
            metrics.compute(["e_recall@1", name], x, y)
    with pytest.raises(ValueError, match=r"confidence must be \(N,\)"):
        metrics.compute(["erc_recall@1"], x, y, confidence=torch.ones(len(y) + 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.compute(["erc_recall@1"], x, y, confidence=torch.full((len(y),), float("nan")))
    for bad in ["erc_recall@0", "erc_recall", "confidence_accuracy@1", "erc_mAP@1", "confidence_hist@3"]:
        with pytest.raises(ConfigError):
            metrics.parse(bad)


def test_no_relevant_item_is_nan():
    x = line([0, 1, 2])
    r = metrics.compute(UNCERTAINTY, x, torch.arange(3), confidence=torch.ones(3))
    assert all(np.isnan(r[k]) for k in UNCERTAINTY)


def test_faiss_backend_gives_the_same_values():
    pytest.importorskip("faiss")
    x, y = clustered(n_classes=10, dim=6, seed=5)
    conf = x.norm(dim=1)
    exact = metrics.compute(UNCERTAINTY, x, y, confidence=conf)
    assert metrics.compute(UNCERTAINTY, x, y, confidence=conf, backend="faiss") == pytest.approx(exact)
