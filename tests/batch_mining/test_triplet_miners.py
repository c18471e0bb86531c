"""Values of the triplet miners: hand-placed points, brute-force loops, distributions, PML oracles."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from pytorch_metric_learning import miners as pml_miners

from tests.batch_mining.helpers import assert_valid_triplets, build, points, unit_circle
from tests.conftest import make_batch
from utilities.errors import ConfigError


def reference_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances in float64, pair by pair (independent of the miners' distance helper)."""
    x = x.double()
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def frequencies(samples: list[int], support: list[int]) -> np.ndarray:
    c = Counter(samples)
    return np.array([c[s] for s in support], dtype=float) / max(1, len(samples))


# ---- random -----------------------------------------------------------------------------------------


def test_random_is_uniform_over_all_valid_triplets():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    valid = [t for t in itertools.product(range(6), repeat=3)
             if t[0] != t[1] and y[t[0]] == y[t[1]] and y[t[2]] != y[t[0]]]  # fmt: skip
    assert len(valid) == 3 * 2 * 3 + 2 * 1 * 4
    miner = build("random", seed=0)
    drawn: list[tuple[int, ...]] = []
    x = torch.randn(6, 4)
    for _ in range(1500):
        a, p, n = miner(x, y)
        assert len(a) == 6
        drawn += list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    assert set(drawn) <= set(valid)
    freq = frequencies(drawn, valid)
    expected = 1 / len(valid)
    sigma = math.sqrt(expected * (1 - expected) / len(drawn))
    assert np.abs(freq - expected).max() < 5 * sigma


# ---- semihard ---------------------------------------------------------------------------------------


def semihard_points() -> tuple[torch.Tensor, torch.Tensor]:
    # anchor 0 at the origin, its only positive 1 at distance 0.3 (d² = 0.09); with m = 0.2 the
    # semi-hard window is 0.09 < d² < 0.29, i.e. 0.3 < d < 0.5385 (plain distances: 0.3 < d < 0.5)
    x = points([[0, 0], [0.3, 0], [0, 0.52], [-0.2, 0], [0, -0.7]])
    y = torch.tensor([0, 0, 1, 2, 3])
    return x, y


def test_semihard_exact_triplet_uses_squared_distances():
    x, y = semihard_points()
    a, p, n = build("semihard", seed=0)(x, y)
    row = dict(zip(a.tolist(), zip(p.tolist(), n.tolist(), strict=True), strict=True))
    # 2 (d = 0.52) is semi-hard only with squared distances; 3 is harder, 4 easier than the window
    assert row[0] == (1, 2)
    # anchor 1: d²(1,0) = 0.09; d²(1,2) = 0.3604 (outside), d²(1,3) = 0.25 (inside), d²(1,4) = 0.58
    assert row[1] == (0, 3)


def test_semihard_falls_back_to_a_uniform_negative():
    x, y = semihard_points()
    miner = build("semihard", seed=0, margin=1e-6)
    negs = [miner(x, y)[2][0].item() for _ in range(600)]
    freq = frequencies(negs, [2, 3, 4])
    assert np.abs(freq - 1 / 3).max() < 0.07
    assert miner.pop_stats()["semihard_found"] == 0


def test_semihard_matches_a_brute_force_loop():
    x, y = make_batch(n_classes=7, per_class=4, dim=8, seed=2)
    miner = build("semihard", seed=1, margin=0.5)
    d2 = reference_distances(x).pow(2)
    for _ in range(5):
        a, p, n = miner(x, y)
        assert_valid_triplets(y, a, p, n)
        found = 0
        for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
            window = [c for c in range(len(y)) if y[c] != y[i] and d2[i, j] < d2[i, c] < d2[i, j] + 0.5]
            if window:
                found += 1
                assert k in window
        assert miner.pop_stats()["semihard_found"] == found


# ---- softhard ---------------------------------------------------------------------------------------


def test_softhard_exact_on_hand_placed_points():
    # class 0: 0 (origin), 1 at 0.1, 2 at 1.0; class 1: 3 at 0.5, 4 far away at 3.0
    x = points([[0, 0], [0.1, 0], [1.0, 0], [0, 0.5], [0, 3.0]])
    y = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = build("softhard", seed=0)(x, y)
    row = dict(zip(a.tolist(), zip(p.tolist(), n.tolist(), strict=True), strict=True))
    # anchor 0: hardest positive distance 1.0 -> hard negatives {3}; closest negative 0.5 -> hard positives {2}
    assert row[0] == (2, 3)
    # anchor 2: positives at 1.0, 0.9; negatives at 1.118, 3.16 -> no hard negative (uniform among
    # {3, 4}); hard positives: d > 1.118 -> none -> uniform among {0, 1}
    assert row[2][0] in (0, 1) and row[2][1] in (3, 4)


def test_softhard_matches_a_brute_force_loop():
    x, y = make_batch(n_classes=6, per_class=4, dim=6, seed=4)
    d = reference_distances(x)
    a, p, n = build("softhard", seed=0)(x, y)
    assert_valid_triplets(y, a, p, n)
    assert len(a) == len(y)
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        pos = [c for c in range(len(y)) if c != i and y[c] == y[i]]
        neg = [c for c in range(len(y)) if y[c] != y[i]]
        hard_neg = [c for c in neg if d[i, c] < max(d[i, q] for q in pos)]
        hard_pos = [c for c in pos if d[i, c] > min(d[i, q] for q in neg)]
        assert k in (hard_neg or neg) and j in (hard_pos or pos)


# ---- batchhard --------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_class", [2, 4])
def test_batchhard_equals_pytorch_metric_learning(per_class):
    x, y = make_batch(n_classes=32 // per_class, per_class=per_class, dim=16, seed=5)
    a, p, n = build("batchhard", seed=0)(x, y)
    ra, rp, rn = pml_miners.BatchHardMiner()(x, y)
    ours = sorted(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    theirs = sorted(zip(ra.tolist(), rp.tolist(), rn.tolist(), strict=True))
    assert ours == theirs


def test_batchhard_exact_and_ties_go_to_the_lowest_index():
    x = points([[0, 0], [1, 0], [-1, 0], [0, 0.5], [0, -0.5]])
    y = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = build("batchhard", seed=0)(x, y)
    row = dict(zip(a.tolist(), zip(p.tolist(), n.tolist(), strict=True), strict=True))
    assert row[0] == (1, 3)  # positives 1 and 2 tie at 1.0, negatives 3 and 4 tie at 0.5
    assert row[1] == (2, 3)
    assert row[3] == (4, 0)


# ---- distance-weighted family -------------------------------------------------------------------


def brute_force_distance_probs(x: torch.Tensor, y: torch.Tensor, lower: float, upper: float) -> np.ndarray:
    """p(n | a) from Wu et al.'s formula, one anchor and one negative at a time."""
    b, dim = x.shape
    probs = np.zeros((b, b))
    for i in range(b):
        w = {}
        for j in range(b):
            if y[j] == y[i]:
                continue
            d = math.dist(x[i].tolist(), x[j].tolist())
            if d >= upper:
                continue
            d = min(max(d, lower), 2 - 1e-4)
            w[j] = d ** (2 - dim) * (1 - d * d / 4) ** (-(dim - 3) / 2)
        if not w:  # fallback: uniform over all negatives
            w = {j: 1.0 for j in range(b) if y[j] != y[i]}
        total = sum(w.values())
        for j, v in w.items():
            probs[i, j] = v / total
    return probs


def test_distance_negative_frequencies_follow_inverse_density_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=1)
    y = torch.arange(6).repeat_interleave(2)
    expected = brute_force_distance_probs(x.double(), y, 0.5, 1.4)
    miner = build("distance", seed=0)
    counts = np.zeros((12, 12))
    n_calls = 2500
    for _ in range(n_calls):
        a, p, n = miner(x, y)
        assert torch.equal(a, torch.arange(12)) and torch.equal(y[p], y) and (p != a).all()
        counts[a.numpy(), n.numpy()] += 1
    freq = counts / n_calls
    assert np.abs(freq - expected).max() < 0.035
    assert (freq[expected == 0] == 0).all()  # beyond the cut-off / same class: never drawn


def test_distance_handles_antipodal_points_and_all_negatives_beyond_the_cutoff():
    # 0 and 1 are one class at 90°; 2 sits at 180° from 0 (d = 2) and 3 at 270°
    x = unit_circle([0, 90, 180, 270])
    y = torch.tensor([0, 0, 1, 1])
    for name in ("distance", "rho_distance", "random_distance"):
        miner = build(name, seed=0)
        for _ in range(20):
            out = miner(x, y)
            assert all(((t >= 0) & (t < 4)).all() for t in out)
    # every negative of anchor 0 is at d = √2 > 1.4 or 2: fallback to uniform, no NaN
    probs = build("distance", seed=0).negative_probabilities(x, y)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs[0], torch.tensor([0, 0, 0.5, 0.5]))
    # slightly beyond 2 through rounding, with a loose cut-off: still finite
    x2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0000001, 0.0], [-1.0, 1e-7]])
    probs = build("distance", seed=0, upper_cutoff=3.0).negative_probabilities(x2, y)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(1), torch.ones(4))


def test_distance_requires_normalised_embeddings():
    x, y = make_batch(n_classes=4, per_class=2, dim=8, normalize=False)
    with pytest.raises(ConfigError, match="_normalize"):
        build("distance", seed=0)(x * 3, y)


def test_distance_without_an_upper_cutoff_in_reach_equals_the_brute_force_density():
    """Upper cutoff 3.0 (beyond every distance of unit vectors, ≤ 2): no negative is cut off, so
    the sampling probabilities are the pure inverse density of the loop, no fallback involved."""
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    y = torch.arange(4).repeat_interleave(2)
    ours = build("distance", seed=0, upper_cutoff=3.0).negative_probabilities(x, y)
    ref = brute_force_distance_probs(x.double(), y, 0.5, 3.0)
    assert np.allclose(ours.numpy(), ref, atol=1e-5)


def test_rho_distance_flip_rate_and_flip_semantics():
    x, y = make_batch(n_classes=8, per_class=4, dim=16, seed=3)
    miner = build("rho_distance", seed=0, cp=0.3)
    flips = total = 0
    for _ in range(200):
        a, p, n = miner(x, y)
        flipped = p == a
        assert (y[n[flipped]] == y[a[flipped]]).all() and (n[flipped] != a[flipped]).all()
        assert_valid_triplets(y, a[~flipped], p[~flipped], n[~flipped])
        flips += int(flipped.sum())
        total += len(a)
    stats = miner.pop_stats()
    assert stats == {"rho_flips": flips, "rho_triplets": total}
    assert total == 200 * 32
    assert abs(flips / total - 0.3) < 4 * math.sqrt(0.3 * 0.7 / total)
    with pytest.raises(ConfigError):
        build("rho_distance", seed=0, cp=1.5)


def test_rho_distance_without_flips_is_distance_weighted():
    x, y = make_batch(n_classes=4, per_class=3, dim=5, seed=1)
    miner = build("rho_distance", seed=0, cp=0.0)
    for _ in range(10):
        a, p, n = miner(x, y)
        assert_valid_triplets(y, a, p, n)
    assert miner.pop_stats()["rho_flips"] == 0


def test_random_distance_mines_with_permuted_labels():
    x, y = make_batch(n_classes=8, per_class=4, dim=16, seed=1)
    miner = build("random_distance", seed=0)
    same_p = same_n = total = 0
    for _ in range(300):
        a, p, n = miner(x, y)
        assert (a != p).all()
        same_p += int((y[a] == y[p]).sum())
        same_n += int((y[a] == y[n]).sum())
        total += len(a)
    # under a uniform relabelling a "positive" is a true positive with probability 3/31
    assert abs(same_p / total - 3 / 31) < 0.03
    assert same_n > 0  # true positives do appear as "negatives"


# ---- intra_random -----------------------------------------------------------------------------------


def test_intra_random_triplets_stay_inside_one_uniformly_drawn_class():
    y = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2])
    x = torch.randn(8, 3)
    miner = build("intra_random", seed=0)
    classes, members = [], []
    for _ in range(800):
        a, p, n = miner(x, y)
        assert len(a) == 8 and (y[a] == y[p]).all() and (y[a] == y[n]).all()
        classes += y[a].tolist()
        members += a[y[a] == 2].tolist()
    assert np.abs(frequencies(classes, [0, 1, 2]) - 1 / 3).max() < 0.02
    assert np.abs(frequencies(members, [3, 4, 5, 6, 7]) - 1 / 5).max() < 0.03


# ---- parametric -------------------------------------------------------------------------------------


def test_parametric_bins_follow_the_mode_weights():
    # anchor 0 at the origin; its negatives at distances 0.1, 0.7, 1.3, 1.9 and 2.5 (outside [0, 2))
    x = points([[0, 0], [0.05, 0], [0.1, 0], [0.7, 0], [1.3, 0], [1.9, 0], [2.5, 0]])
    y = torch.tensor([0, 0, 1, 2, 3, 4, 5])
    for mode, weights in {
        "uniform": [1, 1, 1, 1, 0],
        "hards": [1 - 0.05 / 2 - 0.05, 1 - 0.35 - 0.05, 1 - 0.65 - 0.05, 1 - 0.95 - 0.05 + 0.0, 0],
        "veryhards": [1, 0, 0, 0, 0],
    }.items():
        miner = build("parametric", seed=0, mode=mode, n_support=10)
        dist = reference_distances(x).float()
        _, neg = (y[:, None] == y[None, :]), y[:, None] != y[None, :]
        w = miner.negative_weights(dist[:1], neg[:1])[0, 2:]
        # bin k of 10 over [0, 2) has centre t_k = (k + 0.5) / 10
        centres = [(math.floor(d / 0.2) + 0.5) / 10 for d in (0.1, 0.7, 1.3, 1.9)]
        if mode == "hards":
            weights = [1 - t for t in centres] + [0]
        assert torch.allclose(w, torch.tensor(weights, dtype=torch.float32), atol=1e-6), mode
        negs = Counter(miner(x, y)[2][0].item() for _ in range(400))
        assert set(negs) <= {i + 2 for i, v in enumerate(weights) if v > 0}


def test_parametric_falls_back_to_uniform_and_accepts_a_policy_distribution():
    x = points([[0, 0], [0.05, 0], [1.9, 0], [1.95, 0]])
    y = torch.tensor([0, 0, 1, 2])
    miner = build("parametric", seed=0, mode="veryhards", n_support=4)
    negs = [miner(x, y)[2][0].item() for _ in range(400)]  # nothing in the lowest quarter
    assert abs(frequencies(negs, [2, 3])[0] - 0.5) < 0.08
    miner.set_distribution(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert {miner(x, y)[2][0].item() for _ in range(50)} == {2, 3}
    with pytest.raises(ValueError):
        miner.set_distribution(torch.ones(3))
    with pytest.raises(ConfigError):
        build("parametric", seed=0, support_lim=[1.0, 0.5])
    with pytest.raises(ConfigError):
        build("parametric", seed=0, mode="nonsense")
