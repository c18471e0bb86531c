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

from dataclasses import dataclass, field
from typing import Any

import torch

from batch_mining.base import (
    BatchMiner,
    check_normalized,
    label_masks,
    sample_logits,
    sample_uniform,
)
from batch_mining.distance import negative_logits
from utilities.errors import ConfigError


@dataclass
class RhoDistanceHparams:
    lower_cutoff: float = field(default=0.5, metadata={"help": "distances are clipped below at λ_low"})
    upper_cutoff: float = field(
        default=1.4, metadata={"help": "negatives at this distance or farther get weight 0"}
    )
    cp: float = field(default=0.2, metadata={"help": "probability of a ρ-flip per anchor"})
    seed: int = field(default=0, metadata={"global": "seed"})


class RhoDistanceMiner(BatchMiner):
    """Distance-weighted triplets, each flipped to (a, a, positive) with probability cp."""

    name = "rho_distance"
    tuple_kind = "triplets"
    Hparams = RhoDistanceHparams

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        if not 0.0 <= self.hp.cp <= 1.0:
            raise ConfigError(f"--miner_rho_distance_cp must lie in [0, 1], got {self.hp.cp}")

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        check_normalized(batch, self.name)
        pos, neg = label_masks(labels)
        logits = negative_logits(batch, neg, self.hp.lower_cutoff, self.hp.upper_cutoff)
        anchors = torch.nonzero(pos.any(1)).squeeze(1)
        positives = sample_uniform(pos[anchors], gen)
        flip = torch.rand(len(anchors), generator=gen, device=batch.device) < self.hp.cp
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
