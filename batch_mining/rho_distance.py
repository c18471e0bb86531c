"""The study's ρ-regulariser: distance-weighted triplets, some of them "flipped".

Roth, Milbich, Sinha, Gupta, Ommer, Cohen. "Revisiting Training Strategies and Generalization
Performance in Deep Metric Learning." ICML 2020, §5 (ρ-regularisation).
https://arxiv.org/abs/2002.08473

Every sample a with at least one other sample of its class is an anchor. Independently per
anchor, with probability p = ``--miner_rho_distance_cp`` (0.2) the triplet is *flipped*:

    (a, a, j),  j uniform among the other samples of a's class,

i.e. the anchor serves as its own positive and a true positive serves as the negative, so any
triplet/margin loss pushes same-class samples apart (this is how the study's code implements
"replace the negative by a positive"; it densifies the embedding space and raises ρ). Otherwise
the triplet is a standard distance-weighted one (see ``distance.py``; lower cut-off
``--miner_rho_distance_lower_cutoff``, upper cut-off ``--miner_rho_distance_upper_cutoff``).
The number of flipped triplets per epoch is logged as ``miner_rho_flips`` (and the number of
triplets as ``miner_rho_triplets``).

Deviations from the reference implementation: the same fixes as the distance miner (upper
cut-off implemented, d clipped below 2, normalisation checked, vectorised); the flip count is
logged (the reference counted it and never reported it); unflipped anchors without any negative
are dropped instead of crashing.
"""

from __future__ import annotations

from typing import Annotated

import torch

from batch_mining.base import check_normalized, sample_logits, sample_uniform
from batch_mining.distance import DistanceMiner, LowerCutoff, UpperCutoff, negative_logits
from criteria._common import TRIPLETS, same_label_masks
from utilities.errors import ConfigError


class RhoDistanceMiner(DistanceMiner):
    """Distance-weighted triplets, each flipped to (a, a, positive) with probability cp."""

    name = "rho_distance"
    tuple_kind = TRIPLETS

    def __init__(
        self,
        *,
        seed: int,
        lower_cutoff: LowerCutoff = 0.5,
        upper_cutoff: UpperCutoff = 1.4,
        cp: Annotated[float, "probability of a ρ-flip per anchor"] = 0.2,
    ) -> None:
        super().__init__(seed=seed, lower_cutoff=lower_cutoff, upper_cutoff=upper_cutoff)
        if not 0.0 <= cp <= 1.0:
            raise ConfigError(f"--miner_rho_distance_cp must lie in [0, 1], got {cp}")
        self.cp = cp

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        check_normalized(batch, self.name)
        pos, neg = same_label_masks(labels)
        logits = negative_logits(batch, neg, self.lower_cutoff, self.upper_cutoff)
        anchors = torch.nonzero(pos.any(1)).squeeze(1)
        positives = sample_uniform(pos[anchors], gen)
        flip = torch.rand(len(anchors), generator=gen, device=batch.device) < self.cp
        keep = flip | neg[anchors].any(1)
        anchors, positives, flip = anchors[keep], positives[keep], flip[keep]
        # rows without any negative only occur for flipped anchors; give them dummy mass
        rows = logits[anchors]
        rows[~neg[anchors].any(1)] = 0.0
        negatives = sample_logits(rows, gen)
        negatives = torch.where(flip, positives, negatives)
        positives = torch.where(flip, anchors, positives)
        self.count("rho_flips", flip.sum())
        self.count("rho_triplets", len(anchors))
        return anchors, positives, negatives
