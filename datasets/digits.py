"""The embedded dataset: scikit-learn's handwritten digits (1,797 8×8 images, shipped in sklearn).

A zero-shot split like the real benchmarks: train on digits 0-4 (901 images), test on the unseen
digits 5-9 (896 images). Images are scaled to [0, 1] and repeated to 3 channels, so any RGB
backbone accepts them; training augmentation is a random ±1 pixel shift (zero padding, crop).
Needs no download and no ``--source_path``; lets the whole pipeline run on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.base import SplitDataset, SplitOptions, make_splits


def _random_shift(image: torch.Tensor) -> torch.Tensor:
    # drawn from torch's RNG, which SplitDataset.set_epoch seeds per (seed, epoch, sample)
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,)).tolist()
    return padded[:, dy : dy + 8, dx : dx + 8]


class Digits:
    """sklearn handwritten digits: train 0-4, test the unseen 5-9."""

    name = "digits"
    recall_at = (1, 2, 4, 8)

    def __init__(self, *, split: SplitOptions) -> None:
        self.split = split

    def splits(self) -> dict[str, SplitDataset]:
        from sklearn.datasets import load_digits  # lazy: sklearn (+ scipy, pandas) costs seconds of CPU

        data = load_digits()
        images = torch.as_tensor(data.images / 16.0, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)
        images = (images - 0.3) / 0.4  # roughly zero-mean, unit-variance pixels
        labels = np.asarray(data.target)
        train, test = labels < 5, labels >= 5

        def load(i: int) -> torch.Tensor:
            return images[i]

        full_train = SplitDataset(list(np.flatnonzero(train)), labels[train], load, name="training")
        full_test = SplitDataset(list(np.flatnonzero(test)), labels[test], load, name="testing")
        return make_splits(full_train, full_test, _random_shift, None, self.split, self.name)
