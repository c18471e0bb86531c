"""Class-disjoint K-fold cross-validation (``--cv_folds K --cv_fold i``): the folds are disjoint,
cover the training classes, are seeded, keep SOP's super-classes on every side, reproduce the
Reality Check's fold order (hand-computed) and never touch the test split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import architectures
import datasets
import parameters
from datasets.base import (
    SplitDataset,
    SplitOptions,
    cv_fold_masks,
    make_splits,
    mlrc_validation_folds,
    random_validation_folds,
    split_summary,
)
from datasets.digits import Digits
from tests.conftest import ROOT
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError


def options(folds: int, fold: int, scheme: str = "random", seed: int = 1, **kw) -> SplitOptions:
    base = {"use_tv_split": False, "tv_split_perc": 0.8, "tv_split_by_samples": False, "samples_per_class": 2}
    return SplitOptions(**{**base, **kw}, seed=seed, cv_folds=folds, cv_fold=fold, cv_scheme=scheme)


def fold_classes(labels: np.ndarray, folds: int, scheme: str = "random", seed: int = 1, **kw) -> list[set]:
    """The validation classes of every fold, through the masks make_splits uses."""
    out = []
    for i in range(folds):
        train, val = cv_fold_masks(labels, options(folds, i, scheme, seed), **kw)
        assert (train == ~val).all()
        out.append(set(np.unique(labels[val]).tolist()))
    return out


LABELS = np.repeat(np.arange(23), 3)  # 23 classes of 3 images: folds of 5 or 6 classes for K = 4


def test_random_folds_are_disjoint_covering_and_balanced():
    folds = fold_classes(LABELS, 4)
    assert all(not (a & b) for i, a in enumerate(folds) for b in folds[i + 1 :])
    assert set().union(*folds) == set(range(23))
    assert sorted(len(f) for f in folds) == [5, 6, 6, 6]


def test_random_folds_are_seeded():
    assert fold_classes(LABELS, 4, seed=3) == fold_classes(LABELS, 4, seed=3)
    assert fold_classes(LABELS, 4, seed=3) != fold_classes(LABELS, 4, seed=4)
    assert [sorted(f) for f in fold_classes(LABELS, 4, seed=3)] != [[*range(i, 23, 4)] for i in range(4)]


def test_random_folds_spread_every_super_class_over_the_folds():
    classes = np.arange(17)
    groups_of_class = np.array([0] * 8 + [1] * 5 + [2] * 4)  # SOP-like super-classes
    labels = np.repeat(classes, 2)
    folds = fold_classes(labels, 4, groups=np.repeat(groups_of_class, 2))
    assert set().union(*folds) == set(range(17))
    for g, size in ((0, 8), (1, 5), (2, 4)):
        per_fold = [sum(groups_of_class[c] == g for c in f) for f in folds]
        assert sum(per_fold) == size and max(per_fold) - min(per_fold) <= 1, (g, per_fold)
    assert sorted(len(f) for f in folds) == [4, 4, 4, 5]  # the count runs on across groups
    # by hand: the same function, class by class
    by_hand = random_validation_folds(17, 4, 1, groups_of_class)
    assert [set(np.flatnonzero(by_hand == i).tolist()) for i in range(4)] == folds


def test_sop_folds_keep_both_super_classes_on_both_sides(tmp_path):
    fx.make_sop(tmp_path)
    opt = parameters.parse(
        ["--dataset", "online_products", "--source_path", str(tmp_path), "--arch", "smallcnn",
         "--kernels", "0", "--cv_folds", "2", "--cv_fold", "1"]
    )  # fmt: skip
    splits = datasets.select("online_products", opt, architectures.input_config(opt.arch))
    supers = {n: {Path(p).parent.name for p in splits[n].samples} for n in ("training", "validation")}
    assert supers["training"] == supers["validation"] == {"bicycle_final", "chair_final"}
    assert splits["training"].n_classes == splits["validation"].n_classes == 2


def _ranges(folds: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    return [(int(np.flatnonzero(folds == i).min()), int(np.flatnonzero(folds == i).max()), int((folds == i).sum()))
            for i in range(k)]  # fmt: skip


def test_mlrc_order_by_hand():
    """MLRCSplitManager, worked out by hand: CUB (200 classes, 100 training): t = 100, v = 25,
    r = 75; partition p trains on [25p, 25p + 75) and validates on the next 25, modulo 100."""
    cub = mlrc_validation_folds(100, 200, 4)
    assert _ranges(cub, 4) == [(75, 99, 25), (0, 24, 25), (25, 49, 25), (50, 74, 25)]
    assert (cub >= 0).all()
    # 100 classes (50 training): t = 50, v = int(12.5) = 12, r = 38, starts 0, 12, 25, 37
    half = mlrc_validation_folds(50, 100, 4)
    assert _ranges(half, 4) == [(38, 49, 12), (0, 11, 12), (13, 24, 12), (25, 36, 12)]
    assert np.flatnonzero(half < 0).tolist() == [12, 37]  # MLRC never validates them
    # CARS196: t = 98, v = int(24.5) = 24, r = 74, starts 0, 24, 49, 73
    cars = mlrc_validation_folds(98, 196, 4)
    assert _ranges(cars, 4) == [(74, 97, 24), (0, 23, 24), (25, 48, 24), (49, 72, 24)]
    assert np.flatnonzero(cars < 0).tolist() == [24, 73]
    # SOP: 22,634 classes, t = 11,317 (the official training split has 11,318), v = 2,829
    sop = mlrc_validation_folds(11318, 22634, 4)
    assert _ranges(sop, 4) == [(8488, 11316, 2829), (0, 2828, 2829), (2829, 5657, 2829), (5658, 8486, 2829)]
    assert np.flatnonzero(sop < 0).tolist() == [8487, 11317]


def test_mlrc_folds_through_make_splits_ignore_the_seed():
    labels = np.repeat(np.arange(100), 2)
    test = np.repeat(np.arange(100, 200), 2)
    folds = [_split(labels, test, options(4, i, "mlrc", seed=s)) for i in range(4) for s in (1, 7)]
    classes = [set(np.unique(np.asarray(f["validation"].samples) // 2).tolist()) for f in folds]
    assert classes[0] == classes[1] == set(range(75, 100))  # fold 0, seeds 1 and 7
    assert [classes[2 * i] for i in range(1, 4)] == [set(range(25 * (i - 1), 25 * i)) for i in range(1, 4)]
    assert all(f["training"].n_classes == 75 for f in folds)


def _split(train_labels: np.ndarray, test_labels: np.ndarray, split: SplitOptions) -> dict[str, SplitDataset]:
    n = len(train_labels)
    train = SplitDataset(list(range(n)), train_labels, load=int)
    test = SplitDataset(list(range(n, n + len(test_labels))), test_labels, load=int)
    return make_splits(train, test, None, None, split, "synthetic")


def test_digits_folds_leave_the_test_split_untouched():
    plain = split_summary(Digits(split=options(0, 0)).splits())
    seen = set()
    for i in range(2):
        info = split_summary(Digits(split=options(2, i, seed=5)).splits())
        assert info["testing"] == plain["testing"]  # the same images, labels and hash
        assert info["training"]["images"] + info["validation"]["images"] == plain["training"]["images"]
        assert info["training"]["classes"] + info["validation"]["classes"] == 5
        assert info["evaluation"]["hash"] == info["training"]["hash"]  # train metrics on the K-1 folds
        for name in ("training", "evaluation", "validation"):
            assert info[name]["cv"] == {"scheme": "random", "folds": 2, "fold": i, "seed": 5}
        assert "cv" not in info["testing"]
        seen.add(info["validation"]["hash"])
    assert len(seen) == 2 and "validation" not in plain


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"folds": 2, "fold": 0, "use_tv_split": True}, "exclude each other"),
        ({"folds": 4, "fold": 4}, "0..3"),
        ({"folds": 0, "fold": 1}, "needs --cv_folds"),
        ({"folds": 2, "fold": 0, "scheme": "kfold"}, "--cv_scheme"),
    ],
)
def test_bad_fold_options_are_refused_when_built(kw, message):
    with pytest.raises(ConfigError, match=message):
        options(**kw)


def test_more_folds_than_classes_and_a_dataset_validation_split_are_refused():
    labels, test = np.repeat(np.arange(3), 2), np.repeat(np.arange(3, 6), 2)
    with pytest.raises(ConfigError, match="only 3 training classes"):
        _split(labels, test, options(4, 0))
    train = SplitDataset(list(range(6)), labels, load=int)
    own = SplitDataset([7, 8], [9, 9], load=int)
    with pytest.raises(ConfigError, match="its own validation split"):
        make_splits(train, SplitDataset([1], [1], load=int), None, None, options(2, 0), "csv", validation=own)


def test_one_fold_is_no_cross_validation():
    assert "validation" not in _split(np.repeat(np.arange(4), 2), np.arange(4, 8), options(1, 0))


def test_main_refuses_folds_with_a_tv_split_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--dataset", "digits", "--cv_folds", "2", "--use_tv_split",
         "--save_path", str(tmp_path), "--no_progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cv_folds 2 and --use_tv_split exclude each other" in lines[0]
    assert not any(tmp_path.rglob("args.json"))
