"""The exact ranking pass with a depth: ranks up to the depth stay exact, deeper ones read
``missing``, on every backend and kernel pass, and the kernel's sampled bound falls back to the
full row when the sample misjudges it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metrics
from metrics import ranking
from metrics._rank_kernel import ROW_SAMPLE
from metrics.context import EvalContext
from metrics.ranking import PAD, missing, relevant_ranks
from tests.metrics.test_retrieval import clustered


def capped(full: torch.Tensor, depth: int, n_gallery: int) -> torch.Tensor:
    out = full.clone()
    out[(out > depth) & (out != PAD)] = missing(n_gallery)
    return out


@pytest.mark.parametrize("depth", [1, 7, 60, 400])
def test_depth_keeps_every_rank_up_to_it_on_every_backend(depth):
    # a poorly separated split (relevant items deep in the ranking) with query/gallery subsets,
    # wide enough (1,600 columns) that the kernel's sampled bound prunes at the small depths
    x, y = clustered(n_classes=6, dim=4, seed=3, min_size=150, max_size=400, spread=2.5)
    rng = np.random.default_rng(3)
    query = torch.nonzero(torch.tensor(rng.random(len(y)) < 0.3)).flatten()
    every = torch.arange(len(y))
    for gallery in (every, torch.nonzero(torch.tensor(rng.random(len(y)) < 0.9)).flatten()):
        full = relevant_ranks(x, y, query, gallery, 400, backend="torch")
        want = capped(full, depth, len(gallery))
        assert (want == missing(len(gallery))).any() and (want <= depth).any()
        for mode in (0, 1, 2):
            got = relevant_ranks(x, y, query, gallery, 400, backend="numba", numba_mode=mode, depth=depth)
            assert torch.equal(got, want), (depth, mode)
        assert torch.equal(relevant_ranks(x, y, query, gallery, 400, backend="torch", depth=depth), want)


def test_ties_at_the_bound_stay_exact():
    # integer points on a grid: many exact distance ties, broken by gallery position
    rng = np.random.default_rng(11)
    x = torch.tensor(rng.integers(0, 6, size=(3000, 2)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, 3000))
    idx = torch.arange(3000)
    full = relevant_ranks(x, y, idx[:300], idx, 1000, backend="torch")
    for depth in (5, 50):
        got = relevant_ranks(x, y, idx[:300], idx, 1000, backend="numba", depth=depth)
        assert torch.equal(got, capped(full, depth, 3000))


def test_a_misleading_sample_falls_back_to_the_full_row():
    # 1-D points around query 0: the kernel samples every 4th column (4,096 columns), and those
    # are the near ones (column 4k at distance k), so the sample's bound (distance 55) holds
    # only 55 items; the other columns sit just beyond it, at 55.5 + g/10^4. A relevant item
    # there (column 1) ranks 56th, within the depth of 100: trusting the bound would report it
    # as missing; the pass has to notice that the bound holds fewer than 100 items.
    n = 4 * ROW_SAMPLE
    g = torch.arange(n, dtype=torch.float64)
    dist = torch.where(g % 4 == 0, g / 4, 55.5 + g / 1e4)
    dist[4001] = 1e6  # a relevant item far beyond the depth
    x = dist.sqrt().float()[:, None]
    y = torch.arange(n) + 1
    y[[0, 1, 4001]] = 0
    got = relevant_ranks(x, y, torch.tensor([0]), torch.arange(n), 2, backend="numba", depth=100)
    assert got.tolist() == [[56, missing(n)]]
    assert relevant_ranks(x, y, torch.tensor([0]), torch.arange(n), 2, backend="torch").tolist() == [
        [56, n - 1]
    ]


def test_metrics_equal_the_full_pass_and_exact_only_metrics_keep_every_rank(monkeypatch):
    x, y = clustered(n_classes=8, dim=6, seed=5, min_size=100, max_size=300, spread=2.0)
    names = [
        "e_recall@1",
        "e_recall@8",
        "precision@5",
        "r_precision",
        "mAP@R",
        "mAP_c",
        "mAP_1000",
        "mAP_lim",
    ]
    depths = []
    real = ranking.relevant_ranks

    def spy(*args, **kwargs):
        depths.append(kwargs.get("depth"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ranking, "relevant_ranks", spy)
    bounded = metrics.compute(names, x, y, backend="numba")
    assert depths == [1023]  # the deepest cutoff of the list: mAP_lim's
    monkeypatch.setattr(ranking, "relevant_ranks", real)
    ctx = EvalContext(x, y, backend="numba")  # no depth requested: every rank, as before
    ctx.request_ranks(ctx.max_relevant)
    full = {name: metrics.parse(name)(ctx) for name in names}
    assert bounded == pytest.approx(full, abs=0, rel=0)
    monkeypatch.setattr(ranking, "relevant_ranks", spy)
    depths.clear()
    metrics.compute(["e_recall@1", "mAP"], x, y, backend="numba")  # mAP reads every rank
    assert depths == [None]


def test_request_depth_before_and_after_the_pass():
    x, y = clustered(n_classes=4, dim=3, seed=1, min_size=5, max_size=9, spread=3.0)
    idx = torch.arange(len(y))
    ctx = EvalContext(x, y, backend="torch")
    ctx.request_ranks(3)
    ctx.request_depth(2)
    ctx.request_depth(5)  # the deepest request wins
    ranks = ctx.ranks()
    full = relevant_ranks(x, y, idx, idx, 3, backend="torch")
    assert torch.equal(ranks, capped(full, 5, len(y)))
    assert ((full > 5) & (full != PAD)).any() and ((full <= 5) & (full > 2)).any()
    ctx.request_depth(4)  # shallower than the pass: served
    with pytest.raises(RuntimeError, match="before the first"):
        ctx.request_depth(6)
    with pytest.raises(RuntimeError, match="before the first"):
        ctx.request_depth(None)
    unbounded = EvalContext(x, y, backend="torch")
    unbounded.request_ranks(3)
    unbounded.request_depth(2)
    unbounded.request_depth(None)  # one metric reading every rank keeps them all
    assert not (unbounded.ranks() == missing(len(y))).any()
    unbounded.request_depth(10**6)  # every rank was kept: any depth is served
