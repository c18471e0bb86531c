"""Control experiment of the study: distance-weighted mining on randomly permuted labels.

Roth et al., "Revisiting Training Strategies and Generalization Performance in Deep Metric
Learning", ICML 2020 (the "random_distance" control). https://arxiv.org/abs/2002.08473

The batch's label vector is permuted uniformly at random (seeded), and distance-weighted triplets
(see ``distance.py``) are mined with the permuted labels, so "positives" and "negatives" are
mostly wrong. It shares ``--miner_distance_lower_cutoff`` and ``--miner_distance_upper_cutoff``
with the distance miner, as in the reference.

Deviations from the reference implementation: its ``name`` is ``random_distance`` (the reference
claimed "distance" to pass the loss checks; compatibility is now checked on the tuple kind), and
it inherits the distance miner's fixes.
"""

from __future__ import annotations

from typing import Annotated

import torch

from batch_mining.distance import LOWER_CUTOFF_HELP, UPPER_CUTOFF_HELP, DistanceMiner
from criteria._common import TRIPLETS
from utilities.registry import Flag


class RandomDistanceMiner(DistanceMiner):
    """Distance-weighted triplets mined with a random permutation of the labels (control)."""

    name = "random_distance"
    tuple_kind = TRIPLETS

    def __init__(
        self,
        *,
        seed: int,
        lower_cutoff: Annotated[float, Flag(LOWER_CUTOFF_HELP, name="miner_distance_lower_cutoff")] = 0.5,
        upper_cutoff: Annotated[float, Flag(UPPER_CUTOFF_HELP, name="miner_distance_upper_cutoff")] = 1.4,
    ) -> None:
        super().__init__(seed=seed, lower_cutoff=lower_cutoff, upper_cutoff=upper_cutoff)

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        perm = torch.randperm(len(labels), generator=self.generator(batch.device), device=batch.device)
        return super().mine(batch, labels[perm])
