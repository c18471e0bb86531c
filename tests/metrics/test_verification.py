"""roc_auc, tpr@x, eer, fnmr@x: sklearn's roc_auc_score / roc_curve and open-metric-learning's
FNMR@FMR formula on the same pairs, brute-force pair lists, hand-computed curves, the seeded sample's
determinism and its bounded memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

import metrics
from metrics import verification
from metrics.context import EvalContext
from metrics.verification import EER, FnmrAtFmr, RocAuc, TprAtFpr, pair_scores, roc
from tests.metrics.test_retrieval import clustered
from utilities.errors import ConfigError

PAIR_METRICS = ["roc_auc", "tpr@1e-2", "tpr@1e-3", "eer", "fnmr@1e-2", "fnmr@0.1"]


def brute_pairs(x, y, q=None, g=None):
    """Cosines of every ordered (query, gallery item) pair of distinct samples, split by label."""
    z = x.double().numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    y, n = y.numpy(), len(y)
    qs = np.arange(n) if q is None else np.flatnonzero(q.numpy())
    gs = np.arange(n) if g is None else np.flatnonzero(g.numpy())
    s = z[qs] @ z[gs].T  # the whole matrix: small splits only
    same = y[qs][:, None] == y[gs][None, :]
    return np.sort(s[same & (qs[:, None] != gs[None, :])]), np.sort(s[~same])


def oracle(pos, neg):
    """Every metric from sklearn's ROC and open-metric-learning's formula on these scores."""
    scores = np.concatenate([pos, neg])
    truth = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    out = {"roc_auc": roc_auc_score(truth, scores)}
    for x in (1e-2, 1e-3):
        out[f"tpr@{x:.0e}".replace("e-0", "e-")] = tpr[fpr <= x].max()
    for k in range(1, len(fpr)):  # the segment that crosses FPR = FNR, by a loop
        a, b = fpr[k - 1] - (1 - tpr[k - 1]), fpr[k] - (1 - tpr[k])
        if a < 0 <= b:
            out["eer"] = fpr[k - 1] + a / (a - b) * (fpr[k] - fpr[k - 1])
            break
    pos_d, neg_d = 1 - pos.astype(np.float64), 1 - neg.astype(np.float64)
    for x, key in ((1e-2, "fnmr@1e-2"), (0.1, "fnmr@0.1")):
        out[key] = float(np.mean(pos_d >= np.quantile(neg_d, x)))
    return out


def test_hand_computed_curve():
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2: 8 of 9 pairs ordered correctly; at t = 0.7
    # FPR = FNR = 1/3; TPR with FPR <= 0.1: 2/3
    curve = roc(torch.tensor([0.9, 0.8, 0.4]), torch.tensor([0.7, 0.3, 0.2]))
    assert RocAuc().value(curve) == pytest.approx(8 / 9)
    assert EER().value(curve) == pytest.approx(1 / 3)
    assert TprAtFpr(fpr="0.1").value(curve) == pytest.approx(2 / 3)
    assert TprAtFpr(fpr=0.34).value(curve) == pytest.approx(1.0)
    # negative distances 0.3, 0.7, 0.8: median 0.7 (no positive distance 0.1, 0.2, 0.6 reaches it);
    # the 0.25-quantile 0.5 (0.6 reaches it)
    assert FnmrAtFmr(fmr=0.5).value(curve) == pytest.approx(0.0)
    assert FnmrAtFmr(fmr=0.25).value(curve) == pytest.approx(1 / 3)
    # open-metric-learning's documented example: distances -> fnmr@fmr 0.1: 0.4, 0.5: 0.2
    pos_d = torch.tensor([0, 0, 1, 1, 2, 2, 5, 5, 9, 9], dtype=torch.float64)
    neg_d = torch.tensor([3, 3, 4, 4, 6, 6, 7, 7, 8, 8], dtype=torch.float64)
    curve = roc(1 - pos_d, 1 - neg_d)
    assert FnmrAtFmr(fmr=0.1).value(curve) == pytest.approx(0.4)
    assert FnmrAtFmr(fmr=0.5).value(curve) == pytest.approx(0.2)
    # a perfect separation: AUC 1, EER 0, TPR 1 at any FPR
    curve = roc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, -0.5, 0.2]))
    assert (RocAuc().value(curve), EER().value(curve), TprAtFpr(fpr=1e-4).value(curve)) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery"])
def test_all_pairs_equal_brute_force_and_sklearn(protocol):
    x, y = clustered(n_classes=10, dim=5, seed=2, spread=1.5, min_size=1, max_size=9)
    q = g = None
    if protocol == "query_gallery":  # overlapping query and gallery sets
        rng = np.random.default_rng(0)
        q = torch.tensor(rng.random(len(y)) < 0.6)
        g = torch.tensor(rng.random(len(y)) < 0.7)
    ctx = EvalContext(x, y, query_mask=q, gallery_mask=g, seed=3)
    pos, neg, every = pair_scores(ctx)
    assert every
    bpos, bneg = brute_pairs(x, y, q, g)
    np.testing.assert_allclose(np.sort(pos.numpy()), bpos, atol=1e-6)
    np.testing.assert_allclose(np.sort(neg.numpy()), bneg, atol=1e-6)
    r = metrics.compute([*PAIR_METRICS, "tpr@1e-3"], x, y, query_mask=q, gallery_mask=g)
    expected = oracle(pos.numpy(), neg.numpy())  # sklearn on exactly our scores
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, abs=1e-12), key
    assert 0.5 < r["roc_auc"] < 1 and 0 < r["eer"] < 0.5


def test_sampled_positives_are_every_positive_pair(monkeypatch):
    # force the class-by-class path on a small split; tiny tiles split classes and groups
    x, y = clustered(n_classes=12, dim=4, seed=4, min_size=1, max_size=21)
    rng = np.random.default_rng(1)
    q = torch.tensor(rng.random(len(y)) < 0.7)
    g = torch.tensor(rng.random(len(y)) < 0.8)
    monkeypatch.setattr(verification, "EXACT_PAIRS", 0)
    monkeypatch.setattr(verification, "NEG_PAIRS", 4096)
    for tile in (verification.TILE, 64, 1):
        monkeypatch.setattr(verification, "TILE", tile)
        for qm, gm in ((None, None), (q, g)):
            pos, _, every = pair_scores(EvalContext(x, y, query_mask=qm, gallery_mask=gm))
            assert not every
            np.testing.assert_allclose(np.sort(pos.numpy()), brute_pairs(x, y, qm, gm)[0], atol=1e-6)


def test_negative_sample_seeded_bounded_and_unbiased(monkeypatch):
    x, y = clustered(n_classes=40, dim=6, seed=5, spread=1.4, min_size=20, max_size=40)
    monkeypatch.setattr(verification, "EXACT_PAIRS", 2**20)
    assert len(y) ** 2 > verification.EXACT_PAIRS  # the sampled path
    monkeypatch.setattr(verification, "NEG_PAIRS", 2**18)
    a = pair_scores(EvalContext(x, y, seed=1))
    b = pair_scores(EvalContext(x, y, seed=1))
    c = pair_scores(EvalContext(x, y, seed=2))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(torch.sort(a[1]).values, torch.sort(c[1]).values)
    assert 0.9 * 2**18 < len(a[1]) <= 2**18  # candidates minus the few same-label ones
    # every positive is kept (below POS_PAIRS); the sampled metrics are close to the exact ones
    counts = torch.bincount(y)
    assert len(a[0]) == int((counts * (counts - 1)).sum())
    sampled = metrics.compute(PAIR_METRICS, x, y, seed=1)
    monkeypatch.setattr(verification, "EXACT_PAIRS", 10**9)
    exact = metrics.compute(PAIR_METRICS, x, y, seed=1)
    assert sampled["roc_auc"] == pytest.approx(exact["roc_auc"], abs=2e-3)
    assert sampled["eer"] == pytest.approx(exact["eer"], abs=5e-3)
    assert sampled["tpr@1e-2"] == pytest.approx(exact["tpr@1e-2"], abs=5e-3)
    assert sampled["fnmr@0.1"] == pytest.approx(exact["fnmr@0.1"], abs=5e-3)


def test_positive_thinning_is_seeded_and_near_the_budget(monkeypatch):
    x, y = clustered(n_classes=20, dim=4, seed=6, min_size=40, max_size=60)
    counts = torch.bincount(y)
    total = int((counts * (counts - 1)).sum())
    monkeypatch.setattr(verification, "EXACT_PAIRS", 0)
    monkeypatch.setattr(verification, "POS_PAIRS", 5000)
    pos = pair_scores(EvalContext(x, y, seed=7))[0]
    assert torch.equal(pos, pair_scores(EvalContext(x, y, seed=7))[0])
    assert total > 8 * 5000 and abs(len(pos) - 5000) < 5 * math.sqrt(5000)
    every = np.sort(brute_pairs(x, y)[0])
    near = np.abs(every[np.searchsorted(every, pos.numpy()).clip(max=len(every) - 1)] - pos.numpy())
    near = np.minimum(
        near, np.abs(every[(np.searchsorted(every, pos.numpy()) - 1).clip(min=0)] - pos.numpy())
    )
    assert near.max() < 1e-6  # a subset of the positive pairs


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 1024


def test_sop_like_size_stays_memory_bounded():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (Linux)
    except OSError:
        pytest.skip("needs /proc/self/clear_refs to measure the peak")
    n = 20_000  # an N × N float32 matrix would take 1.6 GB
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2000, (n,), generator=gen)
    x = torch.randn(2000, 8, generator=gen)[y] + 0.5 * torch.randn(n, 8, generator=gen)
    with open("/proc/self/status") as f:
        base = int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024
    r = metrics.compute(PAIR_METRICS, x, y, seed=0)
    assert _peak_rss_mb() - base < 300
    assert 0.9 < r["roc_auc"] < 1 and 0 < r["eer"] < 0.2


def test_degenerate_splits_are_nan_and_bad_names_fail():
    x, _ = clustered(n_classes=3, dim=3, seed=0)
    one_class = metrics.compute(PAIR_METRICS, x, torch.zeros(len(x), dtype=torch.long))  # no negative
    singletons = metrics.compute(PAIR_METRICS, x, torch.arange(len(x)))  # no positive
    assert all(math.isnan(v) for v in [*one_class.values(), *singletons.values()])
    for bad in ["tpr", "tpr@0", "tpr@1", "tpr@2", "tpr@abc", "fnmr@-0.1", "roc_auc@1", "eer@1e-3"]:
        with pytest.raises(ConfigError):
            metrics.parse(bad)
    assert metrics.parse("tpr@1e-4").fpr == 1e-4 and metrics.parse("fnmr@0.001").fmr == 1e-3
