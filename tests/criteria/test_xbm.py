"""Cross-batch memory (criteria/xbm.py): FIFO bookkeeping, the memory term against a loop over
anchors-in-batch × references-in-[batch; memory], gradients only through the anchors, checkpoint
round trip, and the pair/tuple losses that accept it. PML's CrossBatchMemory mines among memory
references only (not the current batch) and has no warm-up, so it is not used as an oracle."""

from __future__ import annotations

import pytest
import torch

from criteria.circle import CircleLoss
from criteria.lifted import LiftedLoss
from criteria.multisimilarity import MultiSimilarityLoss
from criteria.npair import NpairLoss
from criteria.triplet import TripletLoss
from criteria.xbm import CrossBatchMemory
from tests.criteria.helpers import AllLifted, AllNpair, AllTriplets, assert_same_loss_and_grads, random_batch


def test_fifo_queue_wraps_around():
    xbm = CrossBatchMemory(criterion=MultiSimilarityLoss(), size=5, embed_dim=2)
    for step in range(3):
        x = torch.full((3, 2), float(step)) + torch.arange(3.0)[:, None] / 10
        xbm.enqueue(x, torch.tensor([step] * 3))
    # 9 rows written into 5 slots: rows 4..8 survive; slot = row % 5
    assert int(xbm.filled) == 5 and int(xbm.pointer) == 9 % 5
    expected_labels = torch.tensor([1, 2, 2, 2, 1])  # slots 0..4 hold rows 5, 6, 7, 8, 4
    assert torch.equal(xbm.memory_labels, expected_labels)
    assert xbm.memory[0, 0].item() == pytest.approx(1.2) and xbm.memory[4, 0].item() == pytest.approx(1.1)
    big = torch.arange(14.0).view(7, 2)
    xbm.enqueue(big, torch.arange(7))  # larger than the memory: only the last 5 rows are kept
    assert sorted(xbm.memory_labels.tolist()) == [2, 3, 4, 5, 6]


def _triplet_ref(anchors_x, ref, labels_all, n, margin):
    terms = []
    for a in range(n):
        for p in range(len(ref)):
            for q in range(len(ref)):
                if p != a and labels_all[p] == labels_all[a] and labels_all[q] != labels_all[a]:
                    d_ap = (anchors_x[a] - ref[p]).pow(2).sum()
                    d_an = (anchors_x[a] - ref[q]).pow(2).sum()
                    terms.append(torch.relu(d_ap - d_an + margin))
    return torch.stack(terms).mean()


def test_triplet_memory_term_matches_loop():
    x1, y1 = random_batch(n_classes=3, per_class=2, seed=51)
    x2, y2 = random_batch(n_classes=3, per_class=2, seed=52)
    inner = TripletLoss(batchminer=AllTriplets(), margin=0.2)
    xbm = CrossBatchMemory(criterion=inner, size=16, embed_dim=x1.shape[1], weight=0.5).double()
    first = xbm(x1, y1)  # empty memory: just the in-batch loss
    torch.testing.assert_close(first, _triplet_ref(x1, x1, y1, len(x1), 0.2))
    assert int(xbm.filled) == 6

    def reference():
        ref = torch.cat([x2.detach(), x1.detach()])
        labels_all = torch.cat([y2, y1])
        return _triplet_ref(x2, x2, y2, len(x2), 0.2) + 0.5 * _triplet_ref(x2, ref, labels_all, len(x2), 0.2)

    xbm.eval()  # no enqueue while comparing
    assert_same_loss_and_grads(lambda: xbm(x2, y2), reference, [x2])


def test_start_iteration_and_eval_mode():
    x, y = random_batch(seed=55)
    inner = MultiSimilarityLoss()
    xbm = CrossBatchMemory(criterion=inner, size=64, embed_dim=x.shape[1], start_iteration=2).double()
    assert torch.equal(xbm(x, y), inner(x, y))  # step 0: memory empty
    assert torch.equal(xbm(x, y), inner(x, y))  # step 1: memory filled but not yet in use
    assert not torch.equal(xbm(x, y), inner(x, y))  # step 2: memory term added
    xbm.eval()
    filled, pointer = int(xbm.filled), int(xbm.pointer)
    xbm(x, y)
    assert (int(xbm.filled), int(xbm.pointer)) == (filled, pointer)  # no enqueue in eval mode


def test_multisimilarity_cross_loss_matches_loop():
    q, yq = random_batch(n_classes=3, per_class=3, dim=4, seed=56)
    mem, ym = random_batch(n_classes=4, per_class=3, dim=4, seed=57)
    ref = torch.cat([q.detach(), mem.detach()])
    y_ref = torch.cat([yq, ym])
    loss = MultiSimilarityLoss()

    def reference():
        s = (q / q.norm(dim=1, keepdim=True)) @ (ref / ref.norm(dim=1, keepdim=True)).T
        total = 0.0
        for i in range(len(q)):
            pos = [s[i, j] for j in range(len(ref)) if j != i and y_ref[j] == yq[i]]
            neg = [s[i, j] for j in range(len(ref)) if y_ref[j] != yq[i]]
            kept_neg = [v for v in neg if v + 0.1 > min(pos)]
            kept_pos = [v for v in pos if v - 0.1 < max(neg)]
            if kept_neg and kept_pos:
                total = total + torch.log(1 + sum(torch.exp(-2 * (v - 0.5)) for v in kept_pos)) / 2
                total = total + torch.log(1 + sum(torch.exp(40 * (v - 0.5)) for v in kept_neg)) / 40
        return total / len(q)

    assert_same_loss_and_grads(lambda: loss.cross_loss(q, yq, ref, y_ref), reference, [q])


@pytest.mark.parametrize(
    "make",
    [
        lambda: NpairLoss(batchminer=AllNpair()),
        lambda: LiftedLoss(batchminer=AllLifted()),
        lambda: CircleLoss(),
        lambda: TripletLoss(batchminer=AllTriplets()),
    ],
    ids=["npair", "lifted", "circle", "triplet"],
)
def test_supported_losses_run_with_memory_and_round_trip(make):
    xbm = CrossBatchMemory(criterion=make(), size=10, embed_dim=8)
    for seed in range(3):
        x, y = random_batch(seed=seed, dtype=torch.float32)
        value = xbm(x, y)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    restored = CrossBatchMemory(criterion=make(), size=10, embed_dim=8)
    restored.load_state_dict(xbm.state_dict())
    assert torch.equal(restored.memory, xbm.memory) and int(restored.iteration) == 3
    xbm.eval(), restored.eval()
    x, y = random_batch(seed=9, dtype=torch.float32)
    assert torch.equal(xbm(x, y), restored(x, y))


def test_unsupported_loss_is_refused():
    from criteria.arcface import ArcFaceLoss

    with pytest.raises(ValueError, match="does not support a cross-batch memory"):
        CrossBatchMemory(criterion=ArcFaceLoss(n_classes=3, embed_dim=4), size=4, embed_dim=4)
    with pytest.raises(ValueError, match="must be positive"):
        CrossBatchMemory(criterion=MultiSimilarityLoss(), size=0, embed_dim=4)
