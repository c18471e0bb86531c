"""Losses ("criteria"): one self-contained file per loss, plus this registry.

Contract (see DESIGN.md §3): ``criterion = select(name, opt, batchminer)``;
``loss = criterion(batch, labels)`` with ``batch`` (B, D) float on any device and ``labels`` (B,)
long; the result is a finite, differentiable scalar (0 with a graph when nothing is mined).
Each class declares ``requires_miner`` and the ``tuple_kind`` it consumes; learnable parameters
are exposed through ``param_groups()`` with their own learning rates.
"""

from __future__ import annotations

import argparse

from torch import nn

from criteria import contrastive, margin, multisimilarity, triplet
from utilities.errors import ConfigError
from utilities.registry import Registry

REGISTRY = Registry("loss", flag_prefix="loss")
for _cls in (
    contrastive.ContrastiveLoss,
    margin.MarginLoss,
    multisimilarity.MultiSimilarityLoss,
    triplet.TripletLoss,
):
    REGISTRY.add(_cls)


def requires_miner(name: str) -> bool:
    return bool(getattr(REGISTRY.get(name), "requires_miner", False))


def select(name: str, opt: argparse.Namespace, batchminer=None) -> nn.Module:
    """Build loss ``name``; checks that ``batchminer`` produces the tuple kind the loss consumes."""
    cls = REGISTRY.get(name)
    if getattr(cls, "requires_miner", False):
        if batchminer is None:
            raise ConfigError(f"loss '{name}' needs a batch miner (--batch_mining)")
        if batchminer.tuple_kind != cls.tuple_kind:
            raise ConfigError(
                f"loss '{name}' consumes {cls.tuple_kind}, but miner '{batchminer.name}' produces "
                f"{batchminer.tuple_kind}; pick a miner that produces {cls.tuple_kind}"
            )
        return REGISTRY.build(name, opt, batchminer=batchminer)
    return REGISTRY.build(name, opt)
