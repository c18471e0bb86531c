"""The study's default batch sampler: random classes, ``samples_per_class`` images each.

Each batch is built by drawing P = ``bs / samples_per_class`` classes uniformly **with
replacement** (so a class can appear twice in a batch, as in the reference study) and then
K = ``samples_per_class`` images of each drawn class. One epoch is ``len(dataset) // bs`` batches,
the reference's definition (it does not guarantee that every image is seen).

Deviations from the reference implementation: driven by a seeded ``torch.Generator`` (its state is
checkpointed), not Python's global ``random``; the K images of a drawn class are taken without
replacement when the class has at least K images (the reference could put the same image twice
in a batch, giving zero-distance "positives"), with replacement otherwise; one vectorised draw per
batch instead of a Python loop over classes; ``bs % samples_per_class`` is checked with a readable
error. For distinct classes per batch and an epoch that covers the data, use the ``pk`` sampler.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from datasampler.base import BatchSampler


class ClassRandomSampler(BatchSampler):
    """bs/spc random classes (with replacement) × spc images each."""

    name = "class_random"

    def __len__(self) -> int:
        return len(self.labels) // self.bs

    def __iter__(self) -> Iterator[list[int]]:
        spc = self.samples_per_class
        n_draw = self.bs // spc
        for _ in range(len(self)):
            rows = torch.randint(len(self.classes), (n_draw,), generator=self.generator)
            yield self.classes.draw(rows, spc, self.generator).reshape(-1).tolist()
