"""Batch miners: one file per miner, plus this registry.

``miner = select(name, opt)`` builds an ``nn.Module``; ``miner(batch, labels)`` runs without grad
on the batch's device and returns index tensors of the miner's ``tuple_kind`` (the kinds are
defined in ``criteria/_common.py``: triplets, pairs, npair, lifted; see ``batch_mining/base.py``).
A criterion that holds the miner as a submodule carries the miner's generator states in its own
``state_dict()``.
"""

from __future__ import annotations

import argparse

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
from utilities.registry import Registry

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


def select(name: str, opt: argparse.Namespace) -> BatchMiner:
    """Build miner ``name``: hyperparameters from ``opt``, seeded with ``opt.seed``."""
    return REGISTRY.build(name, opt, seed=opt.seed)
