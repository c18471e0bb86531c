"""Class-agnostic random batches (the study's ``full_random`` sampler), with one guaranteed pair.

Each epoch the dataset is shuffled (seeded) and cut into ``len(dataset) // bs`` chunks of
``bs − 1`` images, so every image is drawn with the same probability and at most once per epoch
(the last ``len(dataset) mod (bs − 1)``-ish images of the permutation are left for later epochs).
Each chunk is completed by one more image: another image of the class of a random member of the
chunk (among members whose class has another image), so a tuple-based loss always finds at least
one positive pair. ``--samples_per_class`` plays no role beyond the shared ``bs`` check.

Deviations from the reference implementation: images are drawn uniformly from the dataset
(the reference drew a uniform *class*, then a uniform image of it, i.e. class-uniform, and with
replacement); the extra image is never the same image as its partner; seeded ``torch.Generator``;
reachable by its exact name (the reference dispatched on substrings).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from datasampler.base import BatchSampler, Labels
from utilities.errors import ConfigError


class FullRandomSampler(BatchSampler):
    """bs − 1 uniformly random images plus one positive partner for one of them."""

    name = "full_random"

    def __init__(self, *, labels: Labels, bs: int, samples_per_class: int, seed: int) -> None:
        super().__init__(labels=labels, bs=bs, samples_per_class=samples_per_class, seed=seed)
        if bs < 2:
            raise ConfigError("the full_random sampler needs --bs ≥ 2")
        if not bool((self.classes.counts > 1).any()):
            raise ConfigError("the full_random sampler needs at least one class with two images")

    def __len__(self) -> int:
        return len(self.labels) // self.bs

    def __iter__(self) -> Iterator[list[int]]:
        n_batches, m = len(self), self.bs - 1
        chunks = torch.randperm(len(self.labels), generator=self.generator)[: n_batches * m].view(
            n_batches, m
        )
        has_partner = self.classes.counts[self.classes.row_of[chunks]] > 1
        # a chunk without any image whose class has a second image: fall back to any dataset image
        # that has one (rare: only for datasets made almost entirely of singleton classes)
        keys = torch.rand(chunks.shape, generator=self.generator).masked_fill_(~has_partner, -1.0)
        col = keys.argmax(1)
        anchor = chunks[torch.arange(n_batches), col]
        lacking = ~has_partner.any(1)
        if lacking.any():
            pool = torch.nonzero(self.classes.counts[self.classes.row_of] > 1).squeeze(1)
            pick = torch.randint(len(pool), (int(lacking.sum()),), generator=self.generator)
            anchor[lacking] = pool[pick]
            chunks[lacking, 0] = pool[pick]
        partner = self.classes.draw(self.classes.row_of[anchor], 1, self.generator, exclude=anchor)
        yield from torch.cat([chunks, partner], 1).tolist()
