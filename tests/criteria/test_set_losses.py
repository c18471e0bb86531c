"""N-pair, angular and lifted losses (tuple kinds "npair" and "lifted").

Brute force: loops over anchors and their negatives/positives from the papers' formulas, float64,
loss and gradients. pytorch-metric-learning (PML) as an oracle where the formula is the same:
* npair   = PML NPairsLoss (unnormalised dot products, l2 = 0) when each anchor's negatives are the other anchors' positives
  (Sohn's one-pair-per-class form; PML builds exactly that);
* angular : its angular term L_ang (isolated as L(λ = 1) − L(λ = 0)) = PML AngularLoss(alpha=45) with
  all other-class samples as negatives, on normalised input (PML normalises anchors and positives
  but not the negatives); PML has no N-pair + angular combination;
* lifted  = PML GeneralizedLiftedStructureLoss(neg_margin, pos_margin=0, no normalisation) + l2·mean‖x‖.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances, losses

from criteria.angular import AngularLoss
from criteria.lifted import LiftedLoss
from criteria.npair import NpairLoss
from tests.criteria.helpers import AllLifted, AllNpair, FixedMiner, assert_same_loss_and_grads, random_batch


def _log1p_sum_exp(terms):
    return torch.log(1 + torch.stack(terms).exp().sum()) if terms else torch.zeros((), dtype=torch.float64)


def _npair_ref(x, labels, tuples, l2, squared=False):
    anchors, positives, neg_mask = tuples
    per_anchor = []
    for a, p, row in zip(anchors, positives, neg_mask, strict=True):
        per_anchor.append(_log1p_sum_exp([x[a] @ x[n] - x[a] @ x[p] for n in range(len(x)) if row[n]]))
    norms = torch.stack([x[i].norm() ** (2 if squared else 1) for i in range(len(x))])
    return torch.stack(per_anchor).mean() + l2 * norms.mean()


@pytest.mark.parametrize("squared", [False, True])
def test_npair_matches_loop(squared):
    x, labels = random_batch(seed=11, normalize=False)
    tuples = AllNpair()(None, labels)
    loss = NpairLoss(batchminer=AllNpair(), l2=0.01, l2_squared=squared)
    assert_same_loss_and_grads(
        lambda: loss(x, labels), lambda: _npair_ref(x, labels, tuples, 0.01, squared), [x]
    )


def test_npair_one_pair_per_class_matches_pml():
    x, labels = random_batch(n_classes=5, per_class=2, seed=12, normalize=False, shuffle=False)
    anchors, positives = torch.arange(0, 10, 2), torch.arange(1, 10, 2)
    neg_mask = torch.zeros(5, 10, dtype=torch.bool)
    for i in range(5):
        for j in range(5):
            neg_mask[i, positives[j]] = i != j
    loss = NpairLoss(batchminer=FixedMiner("npair", (anchors, positives, neg_mask)), l2=0.0)
    pml = losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False))
    pairs = (anchors, positives, anchors[:0], positives[:0])
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels, pairs), [x])


def _angular_ref(x, labels, tuples, alpha_deg, lam, l2):
    anchors, positives, neg_mask = tuples
    t2 = math.tan(math.radians(alpha_deg)) ** 2
    unit = x / x.norm(dim=1, keepdim=True)
    ang = []
    for a, p, row in zip(anchors, positives, neg_mask, strict=True):
        ang.append(
            _log1p_sum_exp(
                [
                    4 * t2 * (unit[a] + unit[p]) @ unit[n] - 2 * (1 + t2) * unit[a] @ unit[p]
                    for n in range(len(x))
                    if row[n]
                ]
            )
        )
    return _npair_ref(x, labels, tuples, 0.0) + lam * torch.stack(ang).mean() + l2 * x.norm(dim=1).mean()


def test_angular_matches_loop():
    x, labels = random_batch(seed=13, normalize=False)
    tuples = AllNpair()(None, labels)
    loss = AngularLoss(batchminer=AllNpair(), alpha=36.0, npair_ang_weight=2.0, npair_l2=0.005)
    assert_same_loss_and_grads(
        lambda: loss(x, labels), lambda: _angular_ref(x, labels, tuples, 36.0, 2.0, 0.005), [x]
    )


def test_angular_term_matches_pml():
    x, labels = random_batch(seed=14, normalize=True)  # PML does not normalise the negatives itself
    anchors, positives, _ = AllNpair()(None, labels)
    with_ang = AngularLoss(batchminer=AllNpair(), alpha=45.0, npair_ang_weight=1.0, npair_l2=0.0)
    without = AngularLoss(batchminer=AllNpair(), alpha=45.0, npair_ang_weight=0.0, npair_l2=0.0)
    pml = losses.AngularLoss(alpha=45)
    # PML reads only the positive pairs, but wants a non-empty negative-pair list
    neg_pair = (anchors[:1], torch.nonzero(labels != labels[anchors[0]])[0])
    assert_same_loss_and_grads(
        lambda: with_ang(x, labels) - without(x, labels),
        lambda: pml(torch.nn.functional.normalize(x, dim=1), labels, (anchors, positives, *neg_pair)),
        [x],
        rtol=1e-6,
    )


def test_angular_ragged_negative_sets():
    """Reference bug: anchors with different numbers of negatives crashed (class seen 4× vs 2×)."""
    x, _ = random_batch(n_classes=5, per_class=2, seed=15, normalize=False)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 4])
    value = AngularLoss(batchminer=AllNpair())(x, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _lifted_ref(x, labels, tuples, margin, l2):
    anchors, pos_mask, neg_mask = tuples
    terms = []
    for a, prow, nrow in zip(anchors, pos_mask, neg_mask, strict=True):
        d = [(x[a] - x[j]).norm() for j in range(len(x))]
        pos = torch.log(torch.stack([d[j].exp() for j in range(len(x)) if prow[j]]).sum())
        neg = torch.log(torch.stack([(margin - d[j]).exp() for j in range(len(x)) if nrow[j]]).sum())
        terms.append(torch.relu(pos + neg))
    return torch.stack(terms).mean() + l2 * x.norm(dim=1).mean()


def test_lifted_matches_loop_and_pml():
    x, labels = random_batch(seed=16, normalize=False)
    x.data.mul_(0.4)  # keep some hinges inactive
    tuples = AllLifted()(None, labels)
    loss = LiftedLoss(batchminer=AllLifted(), neg_margin=1.0, l2=0.005)
    assert_same_loss_and_grads(
        lambda: loss(x, labels), lambda: _lifted_ref(x, labels, tuples, 1.0, 0.005), [x]
    )
    pml = losses.GeneralizedLiftedStructureLoss(
        neg_margin=1.0, pos_margin=0.0, distance=distances.LpDistance(normalize_embeddings=False)
    )
    assert_same_loss_and_grads(
        lambda: loss(x, labels), lambda: pml(x, labels) + 0.005 * x.norm(dim=1).mean(), [x], rtol=1e-6
    )


def test_lifted_is_over_samples_not_dimensions():
    """Reference bug: LSE over embedding dimensions. Hand case: 1 anchor, 1 positive at distance 3,
    1 negative at distance 4, m = 1 -> [3 + (1 − 4)]₊ = 0; a positive at 5 gives 2."""
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    tuples = (torch.tensor([0]), torch.tensor([[False, True, False]]), torch.tensor([[False, False, True]]))
    loss = LiftedLoss(batchminer=FixedMiner("lifted", tuples), neg_margin=1.0, l2=0.0)
    assert loss(x, labels).item() == pytest.approx(0.0, abs=1e-12)
    x[1, 0] = 5.0
    assert loss(x, labels).item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kind,make",
    [
        ("npair", lambda m: NpairLoss(batchminer=m)),
        ("npair", lambda m: AngularLoss(batchminer=m)),
        ("lifted", lambda m: LiftedLoss(batchminer=m)),
    ],
    ids=["npair", "angular", "lifted"],
)
def test_nothing_mined_and_one_class(kind, make):
    x, labels = random_batch()
    e = torch.empty(0, dtype=torch.long)
    empty = (
        (e, e, torch.zeros(0, len(x), dtype=torch.bool))
        if kind == "npair"
        else (e, torch.zeros(0, len(x), dtype=torch.bool), torch.zeros(0, len(x), dtype=torch.bool))
    )
    value = make(FixedMiner(kind, empty))(x, labels)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    miner = AllNpair() if kind == "npair" else AllLifted()
    one_class = make(miner)(x, torch.zeros(len(x), dtype=torch.long))  # no negatives anywhere
    singleton = make(miner)(x, torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert torch.isfinite(one_class) and torch.isfinite(singleton)
    if kind == "npair":  # anchors without negatives add no term (not a 0 diluting the mean)
        assert one_class.item() == 0.0
