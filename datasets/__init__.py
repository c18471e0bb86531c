"""Datasets: ``splits = select(opt.dataset, opt, input_config)`` -> dict of :class:`SplitDataset`.

``digits`` is embedded (scikit-learn); ``cub200``, ``cars196``, ``online_products`` and ``inshop``
read the study's or the official on-disk layout (detected automatically); ``folder`` and ``csv``
take custom data. Each plugin's docstring gives its layouts, split sizes and deviations. A plugin
is built with keyword-only context (``source_path``, ``split``, ``images``: see ``base.py``) and
has no hyperparameter flags of its own; :func:`select` is the one place that reads the namespace.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from datasets import cars196, csv_dataset, cub200, digits, folder, inaturalist, inshop, online_products
from datasets.base import ImageOptions, SplitDataset, SplitOptions, class_split_hash, split_summary
from utilities.registry import Registry

REGISTRY = Registry("dataset", flag_prefix="data")
for _cls in (
    digits.Digits,
    cub200.CUB200,
    cars196.Cars196,
    online_products.OnlineProducts,
    inshop.InShop,
    inaturalist.INaturalist,
    folder.Folder,
    csv_dataset.CSVDataset,
):
    REGISTRY.add(_cls)


class InputSize(Protocol):
    """What the datasets need to know of the backbone's input (``architectures.InputConfig``)."""

    crop: int
    resize: int


def recall_at(name: str) -> tuple[int, ...]:
    """The Recall@k ranks reported for dataset ``name`` (its plugin's ``recall_at``)."""
    return tuple(REGISTRY.get(name).recall_at)


def select(name: str, opt: argparse.Namespace, input_config: InputSize) -> dict[str, SplitDataset]:
    """The splits (training, evaluation, testing, optional validation) of dataset ``name``.

    ``input_config``: the backbone's crop size and evaluation resize."""
    split = SplitOptions(
        use_tv_split=opt.use_tv_split,
        tv_split_perc=opt.tv_split_perc,
        tv_split_by_samples=opt.tv_split_by_samples,
        samples_per_class=opt.samples_per_class,
        seed=opt.seed,
        cv_folds=opt.cv_folds,
        cv_fold=opt.cv_fold,
        cv_scheme=opt.cv_scheme,
    )
    images = ImageOptions(
        augmentation=opt.augmentation,
        crop=input_config.crop,
        resize=input_config.resize,
        decode=opt.data_decode,
        cache=opt.data_cache,
        cache_size=opt.data_cache_size,
        workers=opt.kernels,
    )
    return REGISTRY.build(name, opt, source_path=opt.source_path, split=split, images=images).splits()
