"""npair, lifted and multisimilarity miners: masks and pairs against brute-force loops and PML."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners

from tests.batch_mining.helpers import build
from tests.conftest import make_batch

LABELS = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4, 4])  # class 2 and 3 appear once


def test_lifted_masks_match_a_brute_force_loop():
    x = torch.randn(len(LABELS), 4)
    anchors, pos, neg = build("lifted", seed=0)(x, LABELS)
    expected_anchors = [i for i in range(9) if any(LABELS[j] == LABELS[i] and j != i for j in range(9))]
    assert anchors.tolist() == expected_anchors
    for row, i in enumerate(expected_anchors):
        assert pos[row].tolist() == [bool(j != i and LABELS[j] == LABELS[i]) for j in range(9)]
        assert neg[row].tolist() == [bool(LABELS[j] != LABELS[i]) for j in range(9)]


def test_npair_default_all_negatives_and_a_uniform_positive():
    x = torch.randn(len(LABELS), 4)
    miner = build("npair", seed=0)
    counts = torch.zeros(9, 9)
    for _ in range(600):
        anchors, positives, neg = miner(x, LABELS)
        assert anchors.tolist() == [0, 1, 2, 4, 6, 7, 8]
        assert (LABELS[positives] == LABELS[anchors]).all() and (positives != anchors).all()
        assert torch.equal(neg, LABELS[anchors][:, None] != LABELS[None, :])
        counts[anchors, positives] += 1
    # anchor 0 (class 0 = {0, 2, 6}) picks 2 and 6 equally often
    assert abs(counts[0, 2] / 600 - 0.5) < 0.07 and counts[0, 2] + counts[0, 6] == 600


def test_npair_one_pair_per_class_as_in_the_paper():
    x = torch.randn(len(LABELS), 4)
    miner = build("npair", seed=0, one_per_class=True)
    seen_anchor_of_class0 = set()
    for _ in range(50):
        anchors, positives, neg = miner(x, LABELS)
        # one pair for each class with two or more samples: 0, 1, 4
        assert sorted(LABELS[anchors].tolist()) == [0, 1, 4]
        assert (LABELS[positives] == LABELS[anchors]).all() and (positives != anchors).all()
        for row in range(len(anchors)):
            others = [positives[r].item() for r in range(len(anchors)) if r != row]
            assert torch.nonzero(neg[row]).squeeze(1).tolist() == sorted(others)
        seen_anchor_of_class0.add(anchors[LABELS[anchors] == 0].item())
    assert seen_anchor_of_class0 == {0, 2, 6}  # random member of the class


def brute_force_ms_pairs(x: torch.Tensor, y: torch.Tensor, eps: float):
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    s = (xn @ xn.T).tolist()
    b = len(y)
    pos_pairs, neg_pairs = set(), set()
    for i in range(b):
        pos = [k for k in range(b) if k != i and y[k] == y[i]]
        neg = [j for j in range(b) if y[j] != y[i]]
        for j in neg:
            if pos and s[i][j] > min(s[i][k] for k in pos) - eps:
                neg_pairs.add((i, j))
        for k in pos:
            if neg and s[i][k] < max(s[i][j] for j in neg) + eps:
                pos_pairs.add((i, k))
    return pos_pairs, neg_pairs


@pytest.mark.parametrize("per_class", [2, 4])
def test_multisimilarity_pairs_match_the_formula_and_pytorch_metric_learning(per_class):
    x, y = make_batch(n_classes=32 // per_class, per_class=per_class, dim=8, normalize=False, seed=7)
    a1, p, a2, n = build("multisimilarity", seed=0, epsilon=0.1)(x, y)
    ours_pos = set(zip(a1.tolist(), p.tolist(), strict=True))
    ours_neg = set(zip(a2.tolist(), n.tolist(), strict=True))
    ref_pos, ref_neg = brute_force_ms_pairs(x, y, 0.1)
    assert ours_pos == ref_pos and ours_neg == ref_neg
    assert 0 < len(ours_neg) < (y[:, None] != y[None, :]).sum()  # the selection does something
    r1, rp, r2, rn = pml_miners.MultiSimilarityMiner(epsilon=0.1)(x, y)
    assert ours_pos == set(zip(r1.tolist(), rp.tolist(), strict=True))
    assert ours_neg == set(zip(r2.tolist(), rn.tolist(), strict=True))


def test_multisimilarity_anchor_without_positive_or_negative():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])  # sample 2 has no positive: it anchors no negative pair
    a1, p, a2, n = build("multisimilarity", seed=0)(x, y)
    # anchors 0/1: S(0, 1) = 0.994 is not < max_neg + ε ≈ 0.11, S(·, 2) ≈ 0 is not > 0.994 − ε;
    # anchor 2 has no positive, so min over its positives is +∞ and it keeps no negative pair
    assert len(a1) == len(p) == len(a2) == len(n) == 0
    x[2] = torch.tensor([0.95, 0.05])  # now 2 is close: (0, 2) and (1, 2) are informative negatives
    a1, p, a2, n = build("multisimilarity", seed=0)(x, y)
    assert set(zip(a2.tolist(), n.tolist(), strict=True)) == {(0, 2), (1, 2)}
    assert set(zip(a1.tolist(), p.tolist(), strict=True)) == {(0, 1), (1, 0)}
    a1, _, a2, _ = build("multisimilarity", seed=0)(x[:2], y[:2])  # no negatives at all
    assert len(a1) == len(a2) == 0
