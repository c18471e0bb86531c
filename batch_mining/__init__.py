"""Batch miners: one file per miner, plus this registry.

``miner = select(name, opt)``; ``miner(batch, labels)`` runs without grad on the batch's device and
returns index tensors of the miner's ``tuple_kind`` (the kinds are defined in
``criteria/_common.py``: triplets, pairs, npair, lifted; see ``batch_mining/base.py``).
"""

from __future__ import annotations

from batch_mining import (
    batchhard,
    distance,
    intra_random,
    lifted,
    multisimilarity,
    npair,
    parametric,
    random,
    random_distance,
    rho_distance,
    semihard,
    softhard,
)
from batch_mining.base import BatchMiner
from utilities.registry import Registry, make_selector

REGISTRY = Registry("batch miner", flag_prefix="miner")
for _cls in (
    batchhard.BatchHardMiner,
    distance.DistanceMiner,
    intra_random.IntraRandomMiner,
    lifted.LiftedMiner,
    multisimilarity.MultisimilarityMiner,
    npair.NpairMiner,
    parametric.ParametricMiner,
    random.RandomMiner,
    random_distance.RandomDistanceMiner,
    rho_distance.RhoDistanceMiner,
    semihard.SemihardMiner,
    softhard.SofthardMiner,
):
    REGISTRY.add(_cls)

select = make_selector(REGISTRY)
