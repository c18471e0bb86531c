"""Triplet-consuming losses: triplet, margin, contrastive, snr, quadruplet.

Each is compared (value and gradients, float64) with a loop over the mined triplets written from
the paper's formula, and with pytorch-metric-learning (PML) where it implements the same formula:
* triplet     = PML TripletMarginLoss(LpDistance(power=2, no normalisation), MeanReducer);
* contrastive = PML ContrastiveLoss(LpDistance, MeanReducer) on the triplets' (a, p) and (a, n) pairs;
* snr         = PML TripletMarginLoss(SNRDistance without normalisation, AvgNonZeroReducer) +
  ZeroMeanRegularizer.
PML's MarginLoss averages its positive and negative terms over their own non-zero counts (we use
the paper code's joint active-pair count) and PML has no quadruplet loss: brute force only.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import distances, losses, reducers, regularizers

from criteria.contrastive import ContrastiveLoss
from criteria.margin import MarginLoss
from criteria.quadruplet import QuadrupletLoss
from criteria.snr import SnrLoss
from criteria.triplet import TripletLoss
from tests.criteria.helpers import AllTriplets, FixedMiner, assert_same_loss_and_grads, random_batch


def _triplets(labels):
    return AllTriplets()(None, labels)


def _d(u, v):
    return (u - v).pow(2).sum().sqrt()


# ---- triplet ------------------------------------------------------------------------------------
def test_triplet_matches_loop_and_pml():
    x, labels = random_batch(seed=1)
    trips = _triplets(labels)
    loss = TripletLoss(batchminer=AllTriplets(), margin=0.2)

    def reference():
        terms = [
            torch.relu((x[a] - x[p]).pow(2).sum() - (x[a] - x[n]).pow(2).sum() + 0.2)
            for a, p, n in zip(*trips, strict=True)
        ]
        return torch.stack(terms).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x])
    pml = losses.TripletMarginLoss(
        margin=0.2,
        distance=distances.LpDistance(power=2, normalize_embeddings=False),
        reducer=reducers.MeanReducer(),
    )
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels, trips), [x])


def test_triplet_hand_computed():
    x = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 0.4]], dtype=torch.float64)
    miner = FixedMiner("triplets", (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    # 0.09 − 0.16 + 0.2 = 0.13
    assert TripletLoss(batchminer=miner, margin=0.2)(x, torch.tensor([0, 0, 1])).item() == pytest.approx(0.13)


# ---- margin -------------------------------------------------------------------------------------
@pytest.mark.parametrize("nu", [0.0, 0.3])
def test_margin_matches_loop(nu):
    x, labels = random_batch(seed=2)
    trips = _triplets(labels)
    loss = MarginLoss(batchminer=AllTriplets(), margin=0.2, beta=1.2, nu=nu, n_classes=4).double()
    with torch.no_grad():
        loss.beta.copy_(torch.tensor([1.0, 1.1, 1.2, 1.3]))
    beta = loss.beta

    def reference():
        total, active, beta_sum = 0.0, 0, 0.0
        for a, p, n in zip(*trips, strict=True):
            b = beta[labels[a]]
            pos, neg = torch.relu(_d(x[a], x[p]) - b + 0.2), torch.relu(b - _d(x[a], x[n]) + 0.2)
            total = total + pos + neg
            active += int(pos > 0) + int(neg > 0)
            beta_sum = beta_sum + b
        return (total + nu * beta_sum) / max(1, active)

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, beta])


def test_margin_counts_active_pairs_not_triplets():
    """Reference bug: bool + bool is OR, so it divided by 2 here instead of 3 active pairs."""
    x = torch.tensor([[0.0], [1.3], [0.9], [5.0]], dtype=torch.float64)
    miner = FixedMiner("triplets", (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3])))
    loss = MarginLoss(batchminer=miner, margin=0.2, beta=1.2, n_classes=2)
    # (0,1,2): pos 1.3−1.2+0.2 = 0.3, neg 1.2−0.9+0.2 = 0.5; (0,1,3): pos 0.3, neg 0 -> 1.1 / 3
    assert loss(x, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(1.1 / 3)


def test_margin_beta_constant_is_a_buffer_and_not_optimised():
    loss = MarginLoss(batchminer=AllTriplets(), beta_constant=True, n_classes=3)
    assert loss.param_groups() == [] and "beta" in dict(loss.named_buffers())
    learned = MarginLoss(batchminer=AllTriplets(), n_classes=3, beta_lr=0.01)
    (group,) = learned.param_groups()
    assert group["params"][0] is learned.beta and group["lr"] == 0.01 and group["weight_decay"] == 0.0


def test_margin_label_out_of_range_is_a_clear_error():
    x, labels = random_batch(n_classes=4)
    with pytest.raises(ValueError, match="built for 3 classes"):
        MarginLoss(batchminer=AllTriplets(), n_classes=3)(x, labels)


# ---- contrastive --------------------------------------------------------------------------------
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_contrastive_matches_loop(power):
    x, labels = random_batch(seed=3)
    trips = _triplets(labels)
    loss = ContrastiveLoss(batchminer=AllTriplets(), pos_margin=0.1, neg_margin=1.2, power=power)

    def reference():
        pos = [torch.relu(_d(x[a], x[p]) - 0.1) ** power for a, p, _ in zip(*trips, strict=True)]
        neg = [torch.relu(1.2 - _d(x[a], x[n])) ** power for a, _, n in zip(*trips, strict=True)]
        return torch.stack(pos).mean() + torch.stack(neg).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x])


def test_contrastive_matches_pml():
    x, labels = random_batch(seed=4)
    a, p, n = _triplets(labels)
    loss = ContrastiveLoss(batchminer=AllTriplets(), pos_margin=0.1, neg_margin=1.2)
    pml = losses.ContrastiveLoss(
        pos_margin=0.1,
        neg_margin=1.2,
        reducer=reducers.MeanReducer(),
        distance=distances.LpDistance(normalize_embeddings=False),
    )
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels, (a, p, a, n)), [x])


# ---- snr ----------------------------------------------------------------------------------------
def _var(v):
    return (v - v.mean()).pow(2).sum() / (len(v) - 1)


def test_snr_matches_loop_and_pml():
    x, labels = random_batch(seed=5, normalize=False)
    trips = _triplets(labels)
    loss = SnrLoss(batchminer=AllTriplets(), margin=0.2, reg_lambda=0.005)

    def reference():
        hinges = [
            torch.relu(_var(x[p] - x[a]) / _var(x[a]) - _var(x[n] - x[a]) / _var(x[a]) + 0.2)
            for a, p, n in zip(*trips, strict=True)
        ]
        active = sum(int(h > 0) for h in hinges)
        reg = torch.stack([x[i].sum().abs() for i in range(len(x))]).mean()
        return sum(hinges) / max(active, 1) + 0.005 * reg

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x])
    pml = losses.TripletMarginLoss(
        margin=0.2,
        distance=distances.SNRDistance(normalize_embeddings=False),
        reducer=reducers.AvgNonZeroReducer(),
        embedding_regularizer=regularizers.ZeroMeanRegularizer(),
        embedding_reg_weight=0.005,
    )
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels, trips), [x])


def test_snr_no_active_triplet_is_not_nan():
    """Reference bug: Σℓ / #{ℓ > 0} = 0/0 = NaN."""
    x = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [-5.0, 3.0, 9.0]], dtype=torch.float64, requires_grad=True
    )
    miner = FixedMiner("triplets", (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    value = SnrLoss(batchminer=miner, reg_lambda=0.0)(x, torch.tensor([0, 0, 1]))
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(x.grad).all()


# ---- quadruplet ---------------------------------------------------------------------------------
def test_quadruplet_matches_loop():
    x, labels = random_batch(n_classes=4, per_class=3, seed=6)
    trips = _triplets(labels)
    loss = QuadrupletLoss(batchminer=AllTriplets(), margin_alpha_1=0.3, margin_alpha_2=0.25)

    def reference():
        trip_terms, quad_terms = [], []
        for a, p, n in zip(*trips, strict=True):
            d_ap = _d(x[a], x[p])
            trip_terms.append(torch.relu(d_ap - _d(x[a], x[n]) + 0.3))
            qs = [q for q in range(len(x)) if labels[q] != labels[a] and labels[q] != labels[n]]
            if qs:
                quad_terms.append(torch.stack([torch.relu(d_ap - _d(x[n], x[q]) + 0.25) for q in qs]).mean())
        return torch.stack(trip_terms).mean() + torch.stack(quad_terms).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x])


def test_quadruplet_fourth_sample_is_from_a_third_class():
    """1-D case: q must not come from the anchor's or the negative's class."""
    x = torch.tensor([[0.0], [1.0], [1.5], [1.6], [9.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])
    miner = FixedMiner("triplets", (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    loss = QuadrupletLoss(batchminer=miner, margin_alpha_1=0.2, margin_alpha_2=0.2)
    # triplet: [1 − 1.5 + 0.2]₊ = 0; only q = 4 is valid: [1 − 7.5 + 0.2]₊ = 0. A q of class 1
    # (sample 3, d(n, q) = 0.1) would have given 1.1.
    assert loss(x, labels).item() == 0.0
    # two classes only: no valid q -> the second term is 0, the first remains
    x2 = torch.tensor([[0.0], [1.0], [0.5]], dtype=torch.float64)
    assert loss(x2, torch.tensor([0, 0, 1])).item() == pytest.approx(0.7)


def test_quadruplet_any_number_of_triplets():
    """Reference bug: only T = B worked."""
    x, labels = random_batch(seed=7)
    trips = tuple(t[:5] for t in _triplets(labels))
    assert torch.isfinite(QuadrupletLoss(batchminer=FixedMiner("triplets", trips))(x, labels))


# ---- shared edge cases --------------------------------------------------------------------------
MINED = [
    lambda m: TripletLoss(batchminer=m),
    lambda m: MarginLoss(batchminer=m, n_classes=4),
    lambda m: ContrastiveLoss(batchminer=m),
    lambda m: SnrLoss(batchminer=m),
    lambda m: QuadrupletLoss(batchminer=m),
]


@pytest.mark.parametrize("make", MINED, ids=["triplet", "margin", "contrastive", "snr", "quadruplet"])
def test_nothing_mined_gives_a_differentiable_zero(make):
    x, labels = random_batch()
    empty = torch.empty(0, dtype=torch.long)
    value = make(FixedMiner("triplets", (empty, empty, empty)))(x, labels)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("make", MINED, ids=["triplet", "margin", "contrastive", "snr", "quadruplet"])
def test_one_class_only_and_class_seen_once(make):
    x, _ = random_batch(n_classes=1, per_class=6)
    one_class = torch.zeros(6, dtype=torch.long)
    assert make(AllTriplets())(x, one_class).item() == 0.0  # no negative -> nothing mined
    singleton = torch.tensor([0, 0, 1, 1, 2, 3])  # classes 2 and 3 seen once: only negatives
    value = make(AllTriplets())(x, singleton)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
