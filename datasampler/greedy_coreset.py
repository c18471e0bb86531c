"""Greedy coreset (k-center) batches from the embedding memory.

Sener, Savarese. "Active Learning for Convolutional Neural Networks: A Core-Set Approach." ICLR
2018 (k-center greedy); used as a batch sampler by Roth et al., ICML 2020, §4.

Per batch, from a random big batch X of ``--data_batchmatch_bigbs`` memory embeddings (see
``storage.py``), P = bs / samples_per_class images are picked by k-center greedy:

    s_1 random;   s_{t+1} = argmax_{x ∈ X} min_{s ∈ S_t} ‖x − s‖²

i.e. always the point farthest from the current selection. With ``--data_gc_softened`` the next
point is drawn uniformly among the points whose coverage distance is at or above the 97th
percentile instead. Each picked image is completed with samples_per_class − 1 random other images
of its class.

Deviations from the reference implementation: picks are mapped through the right index array
(the reference's mapping bug made the selection random); a class is picked at most once per batch
while the big batch has unused classes (the reference could repeat classes); seeded torch code
instead of unseeded joblib workers; the initial coverage is the distance to the first pick (the
textbook algorithm; the reference started from row norms of the distance matrix).
"""

from __future__ import annotations

from typing import Annotated

import torch

from datasampler.base import Labels
from datasampler.storage import (
    BigBs,
    CoresetSampler,
    LowprojDim,
    NoUpdate,
    PickFn,
    squared_distances,
)
from utilities.registry import Flag


class GreedyCoresetSampler(CoresetSampler):
    """k-center greedy selection of bs/spc classes from a random big batch of the memory."""

    name = "greedy_coreset"

    def __init__(
        self,
        *,
        labels: Labels,
        bs: int,
        samples_per_class: int,
        seed: int,
        bigbs: BigBs = 512,
        no_update: NoUpdate = False,
        lowproj_dim: LowprojDim = -1,
        softened: Annotated[
            bool, Flag("pick at random above the 97th coverage percentile", name="data_gc_softened")
        ] = False,
    ) -> None:
        super().__init__(
            labels=labels,
            bs=bs,
            samples_per_class=samples_per_class,
            seed=seed,
            bigbs=bigbs,
            no_update=no_update,
            lowproj_dim=lowproj_dim,
        )
        self.softened = softened

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, PickFn]:
        dist = squared_distances(x)
        first = torch.randint(len(x), (), generator=self.generator)
        coverage = dist[:, first].clone()

        def next_pick(available: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
            torch.minimum(coverage, dist[:, last], out=coverage)
            if self.softened:
                threshold = torch.quantile(coverage[available], 0.97)
                top = available & (coverage >= threshold)
                keys = torch.rand(len(top), generator=self.generator).masked_fill_(~top, -1.0)
                return keys.argmax()
            return coverage.masked_fill(~available, -1.0).argmax()

        return first, next_pick
