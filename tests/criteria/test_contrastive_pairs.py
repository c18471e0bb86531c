"""Contrastive loss on pair tuples (a1, p, a2, n), the kind pair miners such as multisimilarity yield.

L = mean over positive pairs [d(a1, p) − m⁺]₊^q + mean over negative pairs [m⁻ − d(a2, n)]₊^q
(an empty side contributes 0), compared in float64, value and gradients, with a loop over the
pairs and with pytorch-metric-learning's ContrastiveLoss (LpDistance, MeanReducer) on the pairs of
PML's MultiSimilarityMiner; then with the cross-batch memory (pairs anchored in the batch) and end
to end with the repository's own multisimilarity miner.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers

import batch_mining
import criteria
from criteria._common import PAIRS
from criteria.contrastive import ContrastiveLoss
from criteria.xbm import CrossBatchMemory
from tests.criteria.helpers import AllPairs, FixedMiner, assert_same_loss_and_grads, random_batch


def _d(u, v):
    return (u - v).pow(2).sum().sqrt()


def _pairs_ref(queries, ref, pairs, pos_margin, neg_margin, power):
    """The loss from a loop over the pairs; anchors index ``queries``, partners ``ref``."""
    a1, p, a2, n = pairs
    pos = [torch.relu(_d(queries[i], ref[j]) - pos_margin) ** power for i, j in zip(a1, p, strict=True)]
    neg = [torch.relu(neg_margin - _d(queries[i], ref[j])) ** power for i, j in zip(a2, n, strict=True)]
    total = torch.zeros((), dtype=queries.dtype)
    if pos:
        total = total + torch.stack(pos).mean()
    if neg:
        total = total + torch.stack(neg).mean()
    return total


def _pml_pairs(x, labels):
    """PML's MultiSimilarityMiner pairs: positive and negative lists of different lengths."""
    a1, p, a2, n = miners.MultiSimilarityMiner(epsilon=0.1)(x, labels)
    assert len(a1) > 0 and len(a2) > 0 and len(a1) != len(a2), "degenerate test case"
    return a1, p, a2, n


@pytest.mark.parametrize("power", [1.0, 2.0])
@pytest.mark.parametrize("source", ["all_pairs", "pml_miner"])
def test_contrastive_on_pairs_matches_loop(power, source):
    x, labels = random_batch(seed=41)
    pairs = AllPairs()(None, labels) if source == "all_pairs" else _pml_pairs(x, labels)
    loss = ContrastiveLoss(batchminer=FixedMiner(PAIRS, pairs), pos_margin=0.1, neg_margin=1.2, power=power)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _pairs_ref(x, x, pairs, 0.1, 1.2, power), [x])


def test_contrastive_on_pairs_matches_pml():
    x, labels = random_batch(seed=42)
    pairs = _pml_pairs(x, labels)
    loss = ContrastiveLoss(batchminer=FixedMiner(PAIRS, pairs), pos_margin=0.1, neg_margin=1.2)
    pml = losses.ContrastiveLoss(
        pos_margin=0.1,
        neg_margin=1.2,
        reducer=reducers.MeanReducer(),
        distance=distances.LpDistance(normalize_embeddings=False),
    )
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels, pairs), [x])


@pytest.mark.parametrize("side", ["positive", "negative"])
def test_contrastive_on_pairs_with_one_empty_side(side):
    """Only positive (or only negative) pairs mined: the empty side adds 0, not NaN."""
    x, labels = random_batch(seed=43)
    a1, p, a2, n = AllPairs()(None, labels)
    e = a1[:0]
    pairs = (a1, p, e, e) if side == "positive" else (e, e, a2, n)
    loss = ContrastiveLoss(batchminer=FixedMiner(PAIRS, pairs), pos_margin=0.1, neg_margin=1.2)
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: _pairs_ref(x, x, pairs, 0.1, 1.2, 1.0), [x])


def test_contrastive_pairs_memory_term_matches_loop():
    """With a cross-batch memory, pairs are mined on [batch; memory] and kept when their anchor
    (a1, resp. a2) is in the batch; the references are detached."""
    x1, y1 = random_batch(n_classes=3, per_class=2, seed=44)
    x2, y2 = random_batch(n_classes=3, per_class=2, seed=45)
    inner = ContrastiveLoss(batchminer=AllPairs(), pos_margin=0.1, neg_margin=1.2)
    xbm = CrossBatchMemory(criterion=inner, size=16, embed_dim=x1.shape[1], weight=0.5).double()
    xbm(x1, y1)  # fills the memory
    xbm.eval()  # no enqueue while comparing

    def reference():
        ref = torch.cat([x2.detach(), x1.detach()])
        a1, p, a2, n = AllPairs()(None, torch.cat([y2, y1]))
        k1, k2 = a1 < len(x2), a2 < len(x2)
        memory_pairs = (a1[k1], p[k1], a2[k2], n[k2])
        in_batch = _pairs_ref(x2, x2, AllPairs()(None, y2), 0.1, 1.2, 1.0)
        return in_batch + 0.5 * _pairs_ref(x2, ref, memory_pairs, 0.1, 1.2, 1.0)

    assert_same_loss_and_grads(lambda: xbm(x2, y2), reference, [x2])


def _flags(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for registry in (batch_mining.REGISTRY, criteria.REGISTRY, criteria.WRAPPERS):
        registry.add_args(parser)
    opt = parser.parse_args(list(args))
    opt.seed, opt.embed_dim, opt.lr = 0, 8, 1e-5
    return opt


@pytest.mark.parametrize("xbm_size", [0, 24])
def test_contrastive_trains_with_the_multisimilarity_miner(xbm_size):
    """The pair miner that no loss used to consume: select both, train a few steps end to end."""
    opt = _flags("--xbm_size", str(xbm_size))
    miner = batch_mining.select("multisimilarity", opt)
    assert miner.tuple_kind == PAIRS
    criterion = criteria.select("contrastive", opt, n_classes=4, batchminer=miner)
    inner = criterion.criterion if xbm_size else criterion
    assert isinstance(inner, ContrastiveLoss) and any(m is miner for m in criterion.modules())
    assert isinstance(criterion, CrossBatchMemory) == (xbm_size > 0)

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):
        x, labels = random_batch(n_classes=4, per_class=4, dim=8, seed=seed, dtype=torch.float32)
        emb = torch.nn.functional.normalize(model(x.detach()), dim=1)
        value = criterion(emb, labels)
        optimizer.zero_grad()
        value.backward()
        grad = model.weight.grad
        assert torch.isfinite(value) and value.item() > 0
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        optimizer.step()

    # the in-batch value is the pair formula over exactly what the miner mines
    x, labels = random_batch(n_classes=4, per_class=4, dim=8, seed=7)
    pairs = miner(x, labels)
    assert len(pairs[0]) > 0 and len(pairs[2]) > 0
    assert_same_loss_and_grads(lambda: inner(x, labels), lambda: _pairs_ref(x, x, pairs, 0.0, 1.0, 1.0), [x])
