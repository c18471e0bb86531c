"""Batch miners: one file per miner, plus this registry.

``miner = select(name, opt)``; ``miner(batch, labels)`` runs without grad on the batch's device and
returns index tensors of the miner's ``tuple_kind`` (the kinds are defined in
``criteria/_common.py``: triplets, pairs, npair, lifted).
"""

from __future__ import annotations

from batch_mining import distance, random, semihard
from batch_mining.base import BatchMiner
from utilities.registry import Registry, make_selector

REGISTRY = Registry("batch miner", flag_prefix="miner")
for _cls in (distance.DistanceMiner, random.RandomMiner, semihard.SemihardMiner):
    REGISTRY.add(_cls)

select = make_selector(REGISTRY)
