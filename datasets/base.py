"""Shared dataset machinery: the split container, label re-indexing, train/validation splits.

Every dataset plugin returns a dict of splits (DESIGN.md §3):

* ``training``: training classes, training transforms (what the batch sampler draws from);
* ``evaluation``: training classes, evaluation transforms (train-set metrics, sampler storage);
* ``testing``: the unseen test classes, evaluation transforms;
* ``validation``: with ``--use_tv_split`` only, evaluation transforms.

Each split is a :class:`SplitDataset` whose items are ``(image, label, index)`` and whose
``labels`` are re-indexed to 0..C-1 **per split**. A split may carry ``is_query`` / ``is_gallery``
boolean masks (query/gallery protocol, e.g. In-Shop); without them evaluation is leave-one-out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from utilities.errors import ConfigError


def reindex(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Map arbitrary class ids to 0..C-1, preserving their sorted order."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.astype(np.int64)


_KEEP = object()  # "keep the current transform" (None is a valid transform: the identity)


class SplitDataset(torch.utils.data.Dataset):
    """Items ``(image, label, index)`` from a loader function over ``samples``."""

    def __init__(
        self,
        samples: Sequence[Any],
        labels: Sequence[int] | np.ndarray,
        load: Callable[[Any], Any],
        transform: Callable[[Any], torch.Tensor] | None = None,
        is_query: np.ndarray | None = None,
        is_gallery: np.ndarray | None = None,
        name: str = "",
    ) -> None:
        if len(samples) != len(labels):
            raise ValueError("samples and labels differ in length")
        self.samples = samples
        self.labels = torch.as_tensor(reindex(labels))
        self.n_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.load = load
        self.transform = transform
        self.is_query = None if is_query is None else torch.as_tensor(is_query, dtype=torch.bool)
        self.is_gallery = None if is_gallery is None else torch.as_tensor(is_gallery, dtype=torch.bool)
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.load(self.samples[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), index

    def subset(self, mask: np.ndarray, transform: Any = _KEEP, name: str | None = None) -> SplitDataset:
        """The samples where ``mask`` is true (labels re-indexed again), optionally re-transformed."""
        idx = np.flatnonzero(mask)
        return SplitDataset(
            [self.samples[i] for i in idx],
            self.labels.numpy()[idx],
            self.load,
            self.transform if transform is _KEEP else transform,
            name=self.name if name is None else name,
        )


def train_val_masks(
    labels: np.ndarray, perc: float, by_samples: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) masks over ``labels`` for ``--use_tv_split``.

    By classes (default): the first ⌊C·perc⌋ classes (in label order) train, the rest validate,
    so validation classes are disjoint from training classes, like the test split.
    By samples (``--tv_split_by_samples``): per class, a seeded random ⌊n·perc⌋ of the images train
    and the rest validate (at least one image on each side when the class has two or more).
    """
    labels = np.asarray(labels)
    if not 0.0 < perc < 1.0:
        raise ConfigError(f"--tv_split_perc must lie in (0, 1), got {perc}")
    classes = np.unique(labels)
    if not by_samples:
        n_train = int(np.floor(len(classes) * perc))
        if n_train < 1 or n_train >= len(classes):
            raise ConfigError(
                f"--tv_split_perc {perc} leaves no training or no validation class ({len(classes)} classes)"
            )
        train = np.isin(labels, classes[:n_train])
        return train, ~train
    rng = np.random.default_rng(seed)
    train = np.zeros(len(labels), dtype=bool)
    for c in classes:  # one pass per class, not per sample
        idx = np.flatnonzero(labels == c)
        n_train = int(np.floor(len(idx) * perc))
        n_train = min(max(n_train, 1), len(idx) - 1) if len(idx) > 1 else len(idx)
        train[rng.permutation(idx)[:n_train]] = True
    return train, ~train


def make_splits(
    train: SplitDataset,
    test: SplitDataset,
    train_transform,
    eval_transform,
    opt,
) -> dict[str, SplitDataset]:
    """Assemble the split dict from full train/test sets (applies ``--use_tv_split``)."""
    splits: dict[str, SplitDataset] = {}
    if opt.use_tv_split:
        tr, va = train_val_masks(train.labels.numpy(), opt.tv_split_perc, opt.tv_split_by_samples, opt.seed)
        splits["validation"] = train.subset(va, eval_transform, name="validation")
        train = train.subset(tr, name="training")
    splits["training"] = train.subset(np.ones(len(train), bool), train_transform, name="training")
    splits["evaluation"] = train.subset(np.ones(len(train), bool), eval_transform, name="evaluation")
    splits["testing"] = test
    test.transform, test.name = eval_transform, "testing"
    return splits
