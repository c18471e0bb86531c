"""Datasets: ``splits = select(opt.dataset, opt)`` -> dict of :class:`SplitDataset` (see base.py).

``digits`` is embedded (scikit-learn); ``cub200``, ``cars196``, ``online_products`` and ``inshop``
read the study's or the official on-disk layout (detected automatically); ``folder`` and ``csv``
take custom data. Each plugin's docstring gives its layouts, split sizes and deviations.
"""

from __future__ import annotations

import argparse

from datasets import cars196, csv_dataset, cub200, digits, folder, inshop, online_products
from datasets.base import SplitDataset
from utilities.registry import Registry

REGISTRY = Registry("dataset", flag_prefix="data")
for _cls in (
    digits.Digits,
    cub200.CUB200,
    cars196.Cars196,
    online_products.OnlineProducts,
    inshop.InShop,
    folder.Folder,
    csv_dataset.CSVDataset,
):
    REGISTRY.add(_cls)


def select(name: str, opt: argparse.Namespace) -> dict[str, SplitDataset]:
    """The splits (training, evaluation, testing, optional validation) of dataset ``name``."""
    return REGISTRY.get(name)(opt).splits()
