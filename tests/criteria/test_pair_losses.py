"""Losses over all pairs of the batch: multisimilarity, circle, supcon, histogram, fastap.

Brute force: loops over anchors / pairs / bins from the papers' formulas, float64, loss and
gradients. pytorch-metric-learning (PML) oracles, all on L2-normalised input:
* multisimilarity = PML MultiSimilarityMiner(epsilon) + MultiSimilarityLoss(alpha, beta, base) on a
  batch where every anchor keeps a positive and a negative (PML keeps the one-sided term of an
  anchor whose other kept set is empty; the authors' code, followed here, skips the anchor);
* circle = PML CircleLoss(m, gamma); supcon = PML SupConLoss(temperature);
* histogram = PML HistogramLoss(n_bins = R − 1) (PML's bins are intervals, ours are nodes);
* fastap = PML FastAPLoss(num_bins).
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses, miners

from criteria.circle import CircleLoss
from criteria.fastap import FastAPLoss
from criteria.histogram import HistogramLoss, soft_histogram
from criteria.multisimilarity import MultiSimilarityLoss
from criteria.supcon import SupConLoss
from tests.criteria.helpers import assert_same_loss_and_grads, random_batch


def _unit(x):
    return x / x.norm(dim=1, keepdim=True)


# ---- multi-similarity ---------------------------------------------------------------------------
def _ms_ref(x, labels, alpha, beta, eps, lam):
    s = _unit(x) @ _unit(x).T
    terms = []
    for i in range(len(x)):
        pos = [s[i, j] for j in range(len(x)) if j != i and labels[j] == labels[i]]
        neg = [s[i, j] for j in range(len(x)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        kept_neg = [v for v in neg if v + eps > min(pos)]
        kept_pos = [v for v in pos if v - eps < max(neg)]
        if not kept_neg or not kept_pos:
            continue
        terms.append(
            torch.log(1 + sum(torch.exp(-alpha * (v - lam)) for v in kept_pos)) / alpha
            + torch.log(1 + sum(torch.exp(beta * (v - lam)) for v in kept_neg)) / beta
        )
    return sum(terms) / len(x)  # the authors divide by the batch size


def test_multisimilarity_matches_loop_and_pml():
    x, labels = random_batch(n_classes=3, per_class=4, dim=4, seed=21, normalize=False)
    loss = MultiSimilarityLoss(pos_weight=2.0, neg_weight=40.0, margin=0.1, thresh=0.5)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _ms_ref(x, labels, 2.0, 40.0, 0.1, 0.5), [x])
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    a1, p, a2, n = miner(x, labels)
    assert set(a1.tolist()) == set(a2.tolist()) == set(range(len(x))), (
        "PML comparison needs every anchor valid"
    )
    pml = losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5)
    # PML normalises inside (our loss expects normalised input): compare through one normalisation
    assert_same_loss_and_grads(
        lambda: loss(_unit(x), labels), lambda: pml(_unit(x), labels, (a1, p, a2, n)), [x]
    )


def test_multisimilarity_skips_anchors_and_handles_singletons():
    """A class seen once (reference: min() of an empty tensor) and no surviving pair (issue #3)."""
    x, _ = random_batch(n_classes=4, per_class=2, seed=22)
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    loss = MultiSimilarityLoss()
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _ms_ref(x, labels, 2.0, 40.0, 0.1, 0.5), [x])
    # two tight, far-apart clusters: every negative is mined away -> a differentiable 0
    y = torch.tensor([[1.0, 0.0], [0.999, 0.0447], [-1.0, 0.0], [-0.999, 0.0447]], dtype=torch.float64)
    y = _unit(y).requires_grad_()
    value = loss(y, torch.tensor([0, 0, 1, 1]))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(y.grad, torch.zeros_like(y))


# ---- circle -------------------------------------------------------------------------------------
def _circle_ref(x, labels, m, gamma):
    s = _unit(x) @ _unit(x).T
    terms = []
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(x)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        sum_n = sum(torch.exp(gamma * torch.relu(s[i, j].detach() + m) * (s[i, j] - m)) for j in neg)
        sum_p = sum(torch.exp(-gamma * torch.relu(1 + m - s[i, j].detach()) * (s[i, j] - 1 + m)) for j in pos)
        terms.append(torch.log(1 + sum_n * sum_p))
    return torch.stack(terms).mean()


def test_circle_matches_loop_and_pml():
    x, labels = random_batch(seed=23, normalize=False)
    loss = CircleLoss(margin=0.4, gamma=10.0)  # γ small enough that the plain exp of the loop is exact
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _circle_ref(x, labels, 0.4, 10.0), [x])
    big = CircleLoss(margin=0.25, gamma=256.0)
    pml = losses.CircleLoss(m=0.25, gamma=256.0)
    assert_same_loss_and_grads(lambda: big(x, labels), lambda: pml(x, labels), [x], rtol=1e-6)


# ---- supcon -------------------------------------------------------------------------------------
def _supcon_ref(x, labels, tau):
    z = _unit(x)
    terms = []
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(torch.exp(z[i] @ z[a] / tau) for a in range(len(x)) if a != i)
        terms.append(-sum(torch.log(torch.exp(z[i] @ z[p] / tau) / denom) for p in pos) / len(pos))
    return torch.stack(terms).mean()


def test_supcon_matches_loop_and_pml():
    x, labels = random_batch(seed=24, normalize=False)
    labels[0] = 9  # a class seen once: no positive, not an anchor, still a negative
    loss = SupConLoss(temperature=0.1)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _supcon_ref(x, labels, 0.1), [x])
    pml = losses.SupConLoss(temperature=0.1)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels), [x])


# ---- histogram ----------------------------------------------------------------------------------
def _histogram_ref(x, labels, n_nodes):
    s = _unit(x) @ _unit(x).T
    delta = 2.0 / (n_nodes - 1)
    nodes = [-1.0 + r * delta for r in range(n_nodes)]
    h_pos = [0.0] * n_nodes
    h_neg = [0.0] * n_nodes
    n_pos = n_neg = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            kernel = [torch.relu(1 - (s[i, j] - t).abs() / delta) for t in nodes]
            if labels[i] == labels[j]:
                h_pos, n_pos = [h + k for h, k in zip(h_pos, kernel, strict=True)], n_pos + 1
            else:
                h_neg, n_neg = [h + k for h, k in zip(h_neg, kernel, strict=True)], n_neg + 1
    total = 0.0
    for r in range(n_nodes):
        total = total + h_neg[r] / n_neg * sum(h_pos[q] / n_pos for q in range(r + 1))
    return total


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # inside PML's HistogramLoss
@pytest.mark.parametrize("n_nodes", [11, 65])
def test_histogram_matches_loop_and_pml(n_nodes):
    x, labels = random_batch(n_classes=3, per_class=4, dim=3, seed=25, normalize=False)
    loss = HistogramLoss(nbins=n_nodes)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _histogram_ref(x, labels, n_nodes), [x])
    pml = losses.HistogramLoss(n_bins=n_nodes - 1)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(_unit(x), labels), [x], rtol=1e-6)


@pytest.mark.parametrize("n_nodes", [3, 11, 21, 65, 101])
def test_histogram_keeps_all_mass_for_any_bin_count(n_nodes):
    """Reference bug: float-equality binning kept only 70 % of the mass for R = 11."""
    values = torch.cat(
        [torch.rand(500, dtype=torch.float64) * 2 - 1, torch.tensor([-1.0, 1.0], dtype=torch.float64)]
    )
    hist = soft_histogram(values, n_nodes)
    assert hist.sum().item() == pytest.approx(1.0) and (hist >= 0).all()
    # the mean of the kernel-weighted nodes is the mean of the values (linear interpolation)
    nodes = torch.linspace(-1, 1, n_nodes, dtype=torch.float64)
    assert (hist * nodes).sum().item() == pytest.approx(values.mean().item())


def test_histogram_edge_cases():
    x, _ = random_batch(n_classes=1, per_class=4)
    assert HistogramLoss()(x, torch.zeros(4, dtype=torch.long)).item() == 0.0  # no negative pair
    assert HistogramLoss()(x, torch.arange(4)).item() == 0.0  # every class seen once: no positive pair
    with pytest.raises(ValueError, match="nbins"):
        HistogramLoss(nbins=1)


# ---- fastap -------------------------------------------------------------------------------------
def _fastap_ref(x, labels, n_bins):
    z = _unit(x)
    delta = 4.0 / n_bins
    centres = [b * delta for b in range(n_bins + 1)]
    terms = []
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        d2 = {j: (z[i] - z[j]).pow(2).sum() for j in range(len(x)) if j != i}
        h_pos = [sum(torch.relu(1 - (d2[j] - c).abs() / delta) for j in pos) for c in centres]
        h_all = [sum(torch.relu(1 - (d - c).abs() / delta) for d in d2.values()) for c in centres]
        ap = 0.0
        for b in range(len(centres)):
            cum_pos, cum_all = sum(h_pos[: b + 1]), sum(h_all[: b + 1])
            if float(cum_all.detach()) > 0:
                ap = ap + h_pos[b] * cum_pos / cum_all
        terms.append(1 - ap / len(pos))
    return torch.stack(terms).mean()


def test_fastap_matches_loop_and_pml():
    x, labels = random_batch(seed=26, normalize=False)
    labels[0] = 9  # a class seen once: not a query
    loss = FastAPLoss(num_bins=10)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _fastap_ref(x, labels, 10), [x])
    pml = losses.FastAPLoss(num_bins=10)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels), [x], rtol=1e-6)


@pytest.mark.parametrize("make", [MultiSimilarityLoss, CircleLoss, SupConLoss, FastAPLoss, HistogramLoss])
def test_no_positive_pair_is_a_differentiable_zero(make):
    x, _ = random_batch()
    value = make()(x, torch.arange(len(x)))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.isfinite(x.grad).all() and not math.isnan(value.item())
