"""P×K sampling: P distinct classes × K images per batch, an epoch covering the whole dataset.

Standard in person re-identification and DML (Hermans et al. 2017, "In Defense of the Triplet
Loss"; pytorch-metric-learning's MPerClassSampler, OML's BalanceSampler). Not in the reference
study, whose ``class_random`` draws classes with replacement and does not cover an epoch.

With K = ``--samples_per_class`` and P = ``--bs / K``:

1. every class's images are shuffled and cut into g_c = ⌈n_c / K⌉ groups of K; the last group of
   a class is completed with the class's first images (distinct from the group's own ones), and a
   class with fewer than K images repeats its images (so it appears with duplicates);
2. the classes are put in random order, their groups laid out one class after the other, and
   group t goes to batch t mod L, where L = max(⌈G / P⌉, max_c g_c) with G = Σ g_c. Because a
   class's groups are consecutive and g_c ≤ L, no class appears twice in a batch;
3. batches left with fewer than P groups get groups of random classes not yet in them; the batch
   order is shuffled.

So every image is in at least one batch per epoch, classes within a batch are distinct and the
epoch has exactly ``len(sampler)`` = L batches (which depends only on the labels). Needs at least
P classes (a readable error otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from datasampler.base import BatchSampler, Labels
from utilities.errors import ConfigError


class PKSampler(BatchSampler):
    """P distinct classes × K images per batch; each epoch covers every image."""

    name = "pk"

    def __init__(self, *, labels: Labels, bs: int, samples_per_class: int, seed: int) -> None:
        super().__init__(labels=labels, bs=bs, samples_per_class=samples_per_class, seed=seed)
        self.k = samples_per_class
        self.p = bs // samples_per_class
        if self.p > len(self.classes):
            raise ConfigError(
                f"the pk sampler needs --bs / --samples_per_class = {self.p} distinct classes per "
                f"batch, but the training split has only {len(self.classes)} classes"
            )
        self.groups_per_class = (self.classes.counts + self.k - 1) // self.k

    def __len__(self) -> int:
        n_groups = int(self.groups_per_class.sum())
        return max(-(-n_groups // self.p), int(self.groups_per_class.max()))

    def __iter__(self) -> Iterator[list[int]]:
        k, p, n_batches = self.k, self.p, len(self)
        ci, gen = self.classes, self.generator
        n_classes, width = ci.members.shape
        # 1. shuffle within classes (padding sorts last), then cut into groups of K
        keys = torch.rand(n_classes, width, generator=gen).masked_fill_(ci.members < 0, 2.0)
        shuffled = ci.members.gather(1, keys.argsort(1))
        class_order = torch.randperm(n_classes, generator=gen)
        g = self.groups_per_class[class_order]
        group_class = torch.repeat_interleave(class_order, g)
        group_j = torch.arange(len(group_class)) - torch.repeat_interleave(torch.cumsum(g, 0) - g, g)
        slot = group_j[:, None] * k + torch.arange(k)[None, :]
        slot = slot % ci.counts[group_class][:, None]  # wrap: complete / repeat within the class
        groups = shuffled[group_class[:, None], slot]  # (G, K)
        # 2. stripe the groups over the batches
        table = torch.full((n_batches, p), -1, dtype=torch.long)
        table_class = torch.full((n_batches, p), -1, dtype=torch.long)
        t = torch.arange(len(groups))
        table[t % n_batches, t // n_batches] = torch.arange(len(groups))
        table_class[t % n_batches, t // n_batches] = group_class
        batches = torch.empty(n_batches, p, k, dtype=torch.long)
        filled = table >= 0
        batches[filled] = groups[table[filled]]
        # 3. top up short batches with classes they do not contain yet
        for b in torch.nonzero(~filled.all(1)).squeeze(1).tolist():
            missing = int((~filled[b]).sum())
            present = torch.zeros(n_classes, dtype=torch.bool)
            present[table_class[b][filled[b]]] = True
            ckeys = torch.rand(n_classes, generator=gen).masked_fill_(present, 2.0)
            extra = torch.topk(ckeys, missing, largest=False).indices
            batches[b, ~filled[b]] = ci.draw(extra, k, gen)
        perm = torch.randperm(n_batches, generator=gen)
        yield from batches[perm].reshape(n_batches, p * k).tolist()
