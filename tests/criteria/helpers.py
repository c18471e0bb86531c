"""Shared pieces of the criteria tests: deterministic stub miners, random inputs, comparison helpers.

The stub miners return *all* valid tuples (or fixed ones), so the tests do not depend on the
batch_mining package and every reference loop sees exactly the tuples the loss saw.
"""

from __future__ import annotations

import itertools

import torch

import criteria
from criteria._common import DIRAC, GAUSSIAN, VMF


class FixedMiner:
    """Returns the tuples it was given, whatever the batch."""

    name = "fixed"

    def __init__(self, kind: str, tuples) -> None:
        self.tuple_kind = kind
        self.tuples = tuples

    def __call__(self, batch, labels):
        return self.tuples


class AllTriplets:
    """Every (a, p, n) with y_a = y_p, a ≠ p, y_n ≠ y_a, in lexicographic order."""

    name, tuple_kind = "all_triplets", "triplets"

    def __call__(self, batch, labels):
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        valid = (same & ~eye)[:, :, None] & ~same[:, None, :]
        a, p, n = torch.nonzero(valid, as_tuple=True)
        return a, p, n


class AllPairs:
    """Every positive pair (a1, p), y_a1 = y_p, a1 ≠ p, and every negative pair (a2, n), y_a2 ≠ y_n."""

    name, tuple_kind = "all_pairs", "pairs"

    def __call__(self, batch, labels):
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        a1, p = torch.nonzero(same & ~eye, as_tuple=True)
        a2, n = torch.nonzero(~same, as_tuple=True)
        return a1, p, a2, n


class AllNpair:
    """Each anchor with a positive; its positive is the next sample of its class (cyclically);
    negatives: every other-class sample of the reference set."""

    name, tuple_kind = "all_npair", "npair"

    def __call__(self, batch, labels):
        same = labels[:, None] == labels[None, :]
        pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        anchors = torch.nonzero(pos.any(1)).squeeze(1)
        idx = torch.arange(len(labels), device=labels.device)
        # the first positive after the anchor's own index (wrapping around)
        order = (idx[None, :] - anchors[:, None]) % len(labels)
        order = torch.where(pos[anchors], order, len(labels) + 1)
        positives = order.argmin(1)
        return anchors, positives, ~same[anchors]


class AllLifted:
    """Each anchor with a positive; all of its positives and negatives."""

    name, tuple_kind = "all_lifted", "lifted"

    def __call__(self, batch, labels):
        same = labels[:, None] == labels[None, :]
        pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        anchors = torch.nonzero(pos.any(1)).squeeze(1)
        return anchors, pos[anchors], ~same[anchors]


STUB_MINERS = {"triplets": AllTriplets, "pairs": AllPairs, "npair": AllNpair, "lifted": AllLifted}


def random_batch(
    n_classes: int = 4,
    per_class: int = 3,
    dim: int = 8,
    normalize: bool = True,
    seed: int = 0,
    dtype=torch.float64,
    shuffle: bool = True,
):
    """(x, labels) with x a float64 leaf requiring grad; labels shuffled so classes interleave."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_classes * per_class, dim, generator=g, dtype=dtype)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=g)]
    return x.requires_grad_(), labels


def value_and_grads(fn, tensors):
    """fn() -> scalar; returns (value, grads w.r.t. tensors) without touching .grad."""
    value = fn()
    grads = torch.autograd.grad(value, tensors, allow_unused=True)
    return value.detach(), [
        g if g is not None else torch.zeros_like(t) for g, t in zip(grads, tensors, strict=True)
    ]


def assert_same_loss_and_grads(
    ours, reference, tensors, rtol: float = 1e-7, atol: float = 1e-9, nontrivial: bool = True
):
    """Loss value and gradients w.r.t. ``tensors`` of two zero-argument callables agree.

    With ``nontrivial`` the reference must have a non-zero value and gradient, so that a test
    cannot pass on a case where both sides are trivially 0.
    """
    v1, g1 = value_and_grads(ours, tensors)
    v2, g2 = value_and_grads(reference, tensors)
    if nontrivial:
        assert float(v2) != 0.0 and float(g2[0].abs().sum()) > 0.0, "degenerate test case"
    torch.testing.assert_close(v1, v2.to(v1.dtype), rtol=rtol, atol=atol)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=rtol, atol=atol)
    return v1


def pairs(n: int):
    return itertools.product(range(n), range(n))


def packed(name: str, x: torch.Tensor, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """``x`` (B, D) as the network hands it to loss ``name``: the point itself, or a distribution
    packed as in criteria/_common.py (log σ² around 0; unit μ with κ of order 10 · ``scale``)."""
    kind = criteria.distribution(name)
    if kind == GAUSSIAN:
        return torch.cat([x, 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)], dim=1)
    if kind == VMF:
        log_kappa = torch.log(10.0 * torch.tensor(scale, dtype=x.dtype)) + 0.3 * torch.randn(
            len(x), 1, generator=g, dtype=x.dtype
        )
        return torch.cat([torch.nn.functional.normalize(x, dim=1), log_kappa], dim=1)
    assert kind == DIRAC
    return x
