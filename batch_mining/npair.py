"""N-pair mining: one positive per anchor plus a set of negatives, for the N-pair/Angular losses.

Sohn. "Improved Deep Metric Learning with Multi-class N-pair Loss Objective." NeurIPS 2016.
https://papers.nips.cc/paper/6200

Returns ``(anchors (A,), positives (A,), neg_mask (A, B) bool)``. Two constructions:

* default (the reference study's): every sample with at least one other sample of its class and at
  least one sample of another class is an anchor; its positive is uniform among the other samples
  of its class; its negatives are *all* samples of other classes;
* with ``--miner_npair_one_per_class``, the paper's multi-class N-pair batch: one random (anchor,
  positive) pair per class that has two or more samples; the negatives of an anchor are the
  positives of the *other* classes' pairs (one negative per class).

Deviations from the reference implementation: the negative set is a boolean mask (the reference
built ragged per-anchor index lists, which crashed the Angular loss whenever two anchors had
different numbers of negatives); anchors without a negative are skipped; the paper's one-per-class
construction is available behind a flag.
"""

from __future__ import annotations

from typing import Annotated

import torch

from batch_mining.base import BatchMiner, anchors_with_pos_and_neg, sample_uniform
from criteria._common import NPAIR


def one_pair_per_class(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (anchor, positive) pair of distinct samples for every class with ≥ 2 samples."""
    keys = torch.rand(len(labels), generator=generator, device=labels.device, dtype=torch.float64)
    order = torch.argsort(labels.double() * 2.0 + keys)  # grouped by class, random within a class
    lab = labels[order]
    first = torch.ones_like(lab, dtype=torch.bool)
    first[1:] = lab[1:] != lab[:-1]
    has_second = torch.zeros_like(first)
    has_second[:-1] = lab[1:] == lab[:-1]
    start = torch.nonzero(first & has_second).squeeze(1)
    return order[start], order[start + 1]


class NpairMiner(BatchMiner):
    """(anchor, positive, negative set) tuples for N-pair-style losses."""

    name = "npair"
    tuple_kind = NPAIR

    def __init__(
        self,
        *,
        seed: int,
        one_per_class: Annotated[
            bool, "one (anchor, positive) pair per class, negatives = other pairs' positives"
        ] = False,
    ) -> None:
        super().__init__(seed=seed)
        self.one_per_class = one_per_class

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        if self.one_per_class:
            anchors, positives = one_pair_per_class(labels, gen)
            neg_mask = torch.zeros(len(anchors), len(labels), dtype=torch.bool, device=batch.device)
            neg_mask[:, positives] = True
            neg_mask &= labels[anchors][:, None] != labels[None, :]
            keep = neg_mask.any(1)
            return anchors[keep], positives[keep], neg_mask[keep]
        anchors, pos, neg = anchors_with_pos_and_neg(labels)
        positives = sample_uniform(pos[anchors], gen)
        return anchors, positives, neg[anchors]
