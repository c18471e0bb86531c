"""Datasets: ``splits = select(opt.dataset, opt)`` -> dict of :class:`SplitDataset` (see base.py)."""

from __future__ import annotations

import argparse

from datasets import digits
from datasets.base import SplitDataset
from utilities.registry import Registry

REGISTRY = Registry("dataset", flag_prefix="data")
for _cls in (digits.Digits,):
    REGISTRY.add(_cls)


def select(name: str, opt: argparse.Namespace) -> dict[str, SplitDataset]:
    """The splits (training, evaluation, testing, optional validation) of dataset ``name``."""
    return REGISTRY.get(name)(opt).splits()
