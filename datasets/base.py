"""Shared dataset machinery: the split container, label re-indexing, train/validation splits, the
options every plugin receives, and the scaffold of the on-disk image datasets.

Every dataset plugin returns a dict of splits:

* ``training``: training classes, training transforms (what the batch sampler draws from);
* ``evaluation``: training classes, evaluation transforms (train-set metrics, sampler storage);
* ``testing``: the unseen test classes, evaluation transforms;
* ``validation``: with ``--use_tv_split`` or ``--cv_folds`` only, evaluation transforms.

Each split is a :class:`SplitDataset` whose items are ``(image, label, index)`` and whose
``labels`` are re-indexed to 0..C-1 **per split**. A split may carry ``is_query`` / ``is_gallery``
boolean masks (query/gallery protocol, e.g. In-Shop); without them evaluation is leave-one-out.

**Class-disjoint K-fold cross-validation** (``--cv_folds K --cv_fold i``, :func:`cv_fold_masks`): the
training classes are dealt into K class-disjoint folds; fold ``i`` is the ``validation`` split (it
selects the epoch) and the other K−1 folds are ``training`` / ``evaluation``; the test split is never
touched. ``--cv_scheme random`` deals seeded random folds (within each super-class where the dataset
has them, SOP); ``--cv_scheme mlrc`` reproduces the folds of "A Metric Learning Reality Check"
(Musgrave, Belongie, Lim, ECCV 2020), see :func:`mlrc_validation_folds`.

Plugins take their context keyword-only: ``source_path`` (str), ``split`` (:class:`SplitOptions`)
and ``images`` (:class:`ImageOptions`), each only if it uses it; ``datasets.select`` builds them
from the command line.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datasets.images import (
    IMAGE_EXTENSIONS,
    FileReader,
    ImageCache,
    check_files_exist,
    check_images_readable,
)
from datasets.transforms import build_transforms
from utilities import run_card
from utilities.errors import ConfigError


@dataclass(frozen=True)
class SplitOptions:
    """How the training set is split and checked (``--use_tv_split``, ``--tv_split_perc``,
    ``--tv_split_by_samples``, ``--samples_per_class``, ``--seed``, ``--cv_folds``, ``--cv_fold``,
    ``--cv_scheme``). A fold that does not exist, or folds together with ``--use_tv_split``, is a
    :class:`ConfigError` as soon as the options are built (before any data is read)."""

    use_tv_split: bool
    tv_split_perc: float
    tv_split_by_samples: bool
    samples_per_class: int
    seed: int
    cv_folds: int = 0  # 0 or 1: no cross-validation
    cv_fold: int = 0
    cv_scheme: str = "random"

    def __post_init__(self) -> None:
        check_cv_options(self.cv_folds, self.cv_fold, self.cv_scheme, self.use_tv_split)

    @property
    def cross_validation(self) -> bool:
        return self.cv_folds > 1


@dataclass(frozen=True)
class ImageOptions:
    """How image files are read and transformed: ``augmentation`` (``--augmentation``), the
    backbone's ``crop`` and evaluation ``resize``, ``decode`` (``--data_decode``), ``cache`` and
    ``cache_size`` (``--data_cache``, ``--data_cache_size``) and the ``workers`` that build the
    cache (``--kernels``)."""

    augmentation: str
    crop: int
    resize: int
    decode: Literal["reduced", "full"]
    cache: str
    cache_size: int
    workers: int


def reindex(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Map arbitrary class ids to 0..C-1, preserving their sorted order."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.astype(np.int64)


_KEEP = object()  # "keep the current transform" (None is a valid transform: the identity)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (seed, epoch, index): three rounds of the splitmix64 finaliser, so
    neighbouring indices and epochs get unrelated streams."""
    mask = (1 << 64) - 1
    h = 0
    for v in (seed, epoch, index):
        h = (h ^ (v & mask)) + 0x9E3779B97F4A7C15 & mask
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & mask
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & mask
        h ^= h >> 31
    return h >> 1


class EpochKeyedBatches:
    """Batches of ``(epoch, index)`` keys (see :meth:`SplitDataset.keyed_batches`); plain indices
    while the dataset has no epoch set. Length, state and hooks stay with the wrapped sampler."""

    def __init__(self, batch_sampler: Iterable[list[int]], dataset: SplitDataset) -> None:
        self.batch_sampler, self.dataset = batch_sampler, dataset

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Any]]:
        key = self.dataset.augment_key
        for batch in self.batch_sampler:
            yield list(batch) if key is None else [(key[1], int(i)) for i in batch]


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
        self.augment_key: tuple[int, int] | None = None
        self.cv: dict[str, Any] | None = None  # its --cv_folds fold, recorded by split_summary

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Make the random transform of sample i in this epoch a function of (seed, epoch, i) only.

        The training loop calls this before each epoch. The random crop / flip / shift an image
        gets then no longer depends on which DataLoader worker or which process (under torchrun)
        loads it, nor on what was loaded before it: ``--kernels`` and the number of processes
        leave the augmentation, and so the run, unchanged. Set in the main process; DataLoader
        workers learn the epoch from the ``(epoch, index)`` keys of :meth:`keyed_batches`."""
        self.augment_key = (int(seed), int(epoch))

    def keyed_batches(self, batch_sampler: Iterable[list[int]]) -> EpochKeyedBatches:
        """``batch_sampler`` with each index sent as ``(epoch, index)``, the epoch read from
        :meth:`set_epoch` when an epoch's iteration starts (in the main process). Persistent
        DataLoader workers, which keep the dataset copy of the epoch they were started in, then
        still augment every epoch as :meth:`set_epoch` says."""
        return EpochKeyedBatches(batch_sampler, self)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch = None
        if isinstance(index, tuple):  # (epoch, index) from keyed_batches
            epoch, index = index
        image = self.load(self.samples[index])
        if self.transform is not None:
            if self.augment_key is None:
                image = self.transform(image)
            else:  # a private torch RNG stream per (seed, epoch, sample); the global state is kept
                seed, own_epoch = self.augment_key
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(seed, own_epoch if epoch is None else epoch, index))
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


def sample_keys(split: SplitDataset) -> list[str]:
    """A machine-independent name of each sample: the last two components of its path (or its
    index, for an in-memory dataset)."""
    return ["/".join(Path(str(sample)).parts[-2:]) for sample in split.samples]


def class_split_hash(splits: dict[str, SplitDataset]) -> str:
    """The run card's ``class_split_hash`` of ``splits`` (:func:`utilities.run_card.class_split_hash`).
    A class is named by the SHA-256 of its sorted :func:`sample_keys`, so neither the re-indexed
    labels nor the order in which classes or images were found changes the hash; moving a class to
    another split, or an image to another class, does."""
    classes: dict[str, list[str]] = {}
    for name, split in splits.items():
        keys, labels = np.asarray(sample_keys(split), dtype=str), split.labels.numpy()
        order = np.lexsort((keys, labels))  # by label, then by key
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        members = np.split(keys[order], bounds) if len(order) else []
        classes[name] = [run_card.sha256_text("\n".join(m.tolist())) for m in members]
    return run_card.class_split_hash(classes)


def split_summary(splits: dict[str, SplitDataset]) -> dict[str, dict[str, Any]]:
    """Images and classes of every split (query / gallery counts where the split has them) and a
    hash of its membership: 16 hex digits of the SHA-256 of the sorted (last two path components
    of each sample, label) pairs, so the same class split gives the same hash on any machine and
    any other split (another --seed for the validation split, another dataset release) does not.
    Splits of a cross-validation fold also record it (``cv``: scheme, folds, fold, seed)."""
    out: dict[str, dict[str, Any]] = {}
    for name, split in splits.items():
        entries = sorted(
            f"{key}\t{int(label)}"
            for key, label in zip(sample_keys(split), split.labels.tolist(), strict=True)
        )
        info: dict[str, Any] = {"images": len(split), "classes": split.n_classes}
        if split.is_query is not None:
            info["queries"] = int(split.is_query.sum())
        if split.is_gallery is not None:
            info["gallery"] = int(split.is_gallery.sum())
        info["hash"] = hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
        if split.cv is not None:
            info["cv"] = dict(split.cv)
        out[name] = info
    return out


def train_val_masks(
    labels: np.ndarray, perc: float, by_samples: bool, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) masks over ``labels`` for ``--use_tv_split``.

    By classes (default): the first ⌊C·perc⌋ classes (in label order) train, the rest validate,
    so validation classes are disjoint from training classes, like the test split. With
    ``groups`` (per-sample super-class ids, SOP), the class split is made within each group, so
    every super-class is represented on both sides (as the study does for SOP).
    By samples (``--tv_split_by_samples``): per class, a seeded random ⌊n·perc⌋ of the images train
    and the rest validate (at least one image on each side when the class has two or more).
    """
    labels = np.asarray(labels)
    if not 0.0 < perc < 1.0:
        raise ConfigError(f"--tv_split_perc must lie in (0, 1), got {perc}")
    classes = np.unique(labels)
    if not by_samples and groups is not None:
        groups = np.asarray(groups)
        train = np.zeros(len(labels), dtype=bool)
        for g in np.unique(groups):  # one pass per super-class
            in_group = groups == g
            group_classes = np.unique(labels[in_group])
            n_train = max(1, int(np.floor(len(group_classes) * perc)))
            train |= in_group & np.isin(labels, group_classes[:n_train])
        if train.all() or not train.any():
            raise ConfigError(f"--tv_split_perc {perc} leaves no training or no validation class")
        return train, ~train
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


# ---- class-disjoint K-fold cross-validation (--cv_folds) -----------------------------------------

CV_SCHEMES = ("random", "mlrc")


def check_cv_options(folds: int, fold: int, scheme: str, use_tv_split: bool) -> None:
    """The fold flags make sense together: a fold that exists, and no second validation split."""
    if scheme not in CV_SCHEMES:
        raise ConfigError(f"--cv_scheme {scheme!r}: one of {', '.join(CV_SCHEMES)}")
    if folds < 0 or fold < 0:
        raise ConfigError(f"--cv_folds {folds} --cv_fold {fold}: both must be >= 0")
    if folds <= 1:
        if fold != 0:  # a fold number without folds is a forgotten --cv_folds, not a request for no CV
            raise ConfigError(f"--cv_fold {fold} needs --cv_folds K > 1 (the number of folds)")
        return
    if use_tv_split:
        raise ConfigError(
            f"--cv_folds {folds} and --use_tv_split exclude each other: with folds the validation "
            f"split is the held-out fold --cv_fold"
        )
    if fold >= folds:
        raise ConfigError(f"--cv_fold {fold}: the folds of --cv_folds {folds} are 0..{folds - 1}")


def random_validation_folds(
    n_classes: int, folds: int, seed: int, class_groups: np.ndarray | None = None
) -> np.ndarray:
    """The fold (0..K-1) of each of ``n_classes`` classes for ``--cv_scheme random``.

    The classes are shuffled (seeded) within each group (``class_groups``: the super-class of each
    class, SOP; one group without) and dealt round-robin, the count running on across groups: every
    fold gets ⌊C/K⌋ or ⌈C/K⌉ classes, and every super-class is spread evenly over the folds (as
    ``--use_tv_split`` keeps every super-class on both sides)."""
    rng = np.random.default_rng(seed)
    groups = np.zeros(n_classes, dtype=np.int64) if class_groups is None else np.asarray(class_groups)
    out = np.empty(n_classes, dtype=np.int64)
    dealt = 0
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        out[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return out


def mlrc_validation_folds(n_train: int, n_total: int, folds: int) -> np.ndarray:
    """The validation partition (0..K-1, or -1: never validated) of each of the ``n_train`` training
    classes, in sorted class order, as the Reality Check's ``MLRCSplitManager`` assigns it.

    Evidence: powerful-benchmarker (Musgrave), branch ``metric-learning``,
    ``src/powerful_benchmarker/split_managers/mlrc_split_manager.py`` (``get_trainval_and_test``,
    ``get_kfold_generator``); ``docs/papers/mlrc.md`` reproduces the paper's runs with
    ``--split_manager~SWAP~1 {MLRCSplitManager: {}}`` and ``configs/config_dataset/default.yaml``
    sets ``test_size: 0.5``, ``num_training_partitions: 4`` (``docs/code/split_managers.md``: "the
    same as ClassDisjointSplitManager, but with some differences in rounding and cross-validation
    fold order").

    Over the N sorted class ids of the whole dataset, with K partitions: the first ``t = int(0.5·N)``
    classes are train+val (the rest test), ``v = int(N·0.5/K)`` classes validate and ``r = N − t − v``
    train; partition ``p`` trains on the ``r`` classes from position ``int(p/K·t)`` on and validates on
    the next ``v``, wrapping around the ``t`` train+val classes. So partition 0 validates on the *last*
    quarter and partition p ≥ 1 on quarter p−1 (CUB200, t = 100: 75-99, 0-24, 25-49, 50-74 of the
    0-based training classes), and where K·v < t a few classes are never validated and train in every
    fold (0-based positions; CARS196: t = 98, v = 24, classes 24 and 73; SOP: t = 11,317, v = 2,829,
    class 8,487).

    Here N = training + test classes, the training classes taken to be the first ones in id order
    (CUB200, CARS196, SOP and digits split that way). Deviation, SOP only: the official split has
    11,318 training classes, one more than MLRC's t = 11,317; that class (position 11,317, id 11,318;
    MLRC tests on it) stays a training class here, in every fold, so that the test split remains the official one."""
    t = int(n_total * (1 - 0.5))
    v = int(n_total * ((1.0 / folds) * (1 - 0.5)))
    r = n_total - t - v
    out = np.full(n_train, -1, dtype=np.int64)
    if t == 0:
        return out
    for p in range(folds):
        start = int((float(p) / folds) * t)
        val = (start + r + np.arange(v)) % t
        val = val[val < n_train]  # positions past the training classes would be test classes
        if (out[val] >= 0).any():
            raise AssertionError(f"MLRC folds overlap (n_total {n_total}, folds {folds})")
        out[val] = p
    return out


def cv_fold_masks(
    labels: np.ndarray, split: SplitOptions, groups: np.ndarray | None = None, n_test_classes: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) masks over the training ``labels`` for ``--cv_folds K --cv_fold i``:
    fold i's classes validate, the other K−1 folds (and, ``mlrc``, classes it never validates)
    train. ``groups``: per-sample super-class ids (SOP; ``random`` only); ``n_test_classes``: the
    test split's class count (``mlrc`` counts the classes of the whole dataset)."""
    labels = np.asarray(labels)
    classes, first = np.unique(labels, return_index=True)
    k, i = split.cv_folds, split.cv_fold
    if len(classes) < k:
        raise ConfigError(f"--cv_folds {k}: only {len(classes)} training classes, fewer than the folds")
    if split.cv_scheme == "mlrc":
        fold_of = mlrc_validation_folds(len(classes), len(classes) + n_test_classes, k)
    else:
        class_groups = None if groups is None else np.asarray(groups)[first]
        fold_of = random_validation_folds(len(classes), k, split.seed, class_groups)
    val = np.isin(labels, classes[fold_of == i])
    if not val.any() or val.all():
        raise ConfigError(
            f"--cv_folds {k} --cv_fold {i} ({split.cv_scheme}): the fold leaves no validation or no "
            f"training class ({len(classes)} training classes)"
        )
    return ~val, val


def make_splits(
    train: SplitDataset,
    test: SplitDataset,
    train_transform: Callable[[Any], torch.Tensor] | None,
    eval_transform: Callable[[Any], torch.Tensor] | None,
    split: SplitOptions,
    dataset: str,
    *,
    groups: np.ndarray | None = None,
    validation: SplitDataset | None = None,
) -> dict[str, SplitDataset]:
    """Assemble the split dict of ``dataset`` from full train/test sets (applies ``--use_tv_split``
    or the fold of ``--cv_folds``).

    ``groups``: per-training-sample super-class ids for a class split within super-classes;
    ``validation``: a validation set given by the dataset itself (the ``csv`` plugin), used
    instead of carving one out of the training classes."""
    splits: dict[str, SplitDataset] = {}
    if validation is not None and split.cross_validation:
        raise ConfigError(
            f"--cv_folds {split.cv_folds}: {dataset} brings its own validation split; folds are carved "
            f"out of the training classes only where the dataset has none"
        )
    if validation is not None:
        validation.transform, validation.name = eval_transform, "validation"
        splits["validation"] = validation
    elif split.use_tv_split:
        tr, va = train_val_masks(
            train.labels.numpy(), split.tv_split_perc, split.tv_split_by_samples, split.seed, groups
        )
        splits["validation"] = train.subset(va, eval_transform, name="validation")
        train = train.subset(tr, name="training")
    elif split.cross_validation:
        tr, va = cv_fold_masks(train.labels.numpy(), split, groups, n_test_classes=test.n_classes)
        splits["validation"] = train.subset(va, eval_transform, name="validation")
        train = train.subset(tr, name="training")
    splits["training"] = train.subset(np.ones(len(train), bool), train_transform, name="training")
    splits["evaluation"] = train.subset(np.ones(len(train), bool), eval_transform, name="evaluation")
    splits["testing"] = test
    test.transform, test.name = eval_transform, "testing"
    if split.cross_validation:
        fold = {"scheme": split.cv_scheme, "folds": split.cv_folds, "fold": split.cv_fold}
        if split.cv_scheme == "random":
            fold["seed"] = split.seed
        for name in ("training", "evaluation", "validation"):
            splits[name].cv = fold
    report_small_classes(splits["training"].labels.numpy(), split.samples_per_class, dataset)
    return splits


def report_small_classes(labels: np.ndarray, samples_per_class: int, dataset: str = "") -> list[int]:
    """Warn (before training starts) about training classes with fewer than ``--samples_per_class``
    images: the batch sampler has to repeat their images, and a class of one image has no positive
    pair at all. Returns the offending (re-indexed) class labels."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    small = classes[counts < samples_per_class]
    if len(small):
        examples = ", ".join(
            f"class {c}: {n}" for c, n in zip(small[:5], counts[counts < samples_per_class][:5], strict=True)
        )
        warnings.warn(
            f"{dataset}: {len(small)} training class(es) have fewer than --samples_per_class "
            f"{samples_per_class} images ({examples}{', ...' if len(small) > 5 else ''}); "
            f"the sampler will repeat their images",
            UserWarning,
            stacklevel=2,
        )
    return small.tolist()


# ---- image datasets on disk --------------------------------------------------------------------


@dataclass
class Listing:
    """What a dataset plugin reads from its split files: image paths and raw class ids per split.

    Class ids may be any integers (official ids); :class:`SplitDataset` re-indexes them per split.
    ``test_is_query``/``test_is_gallery``: the query/gallery protocol (In-Shop, csv);
    ``train_groups``: super-class ids (SOP) for the validation class split; ``val_*``: an explicit
    validation set (csv)."""

    train_paths: list[str]
    train_labels: np.ndarray
    test_paths: list[str]
    test_labels: np.ndarray
    test_is_query: np.ndarray | None = None
    test_is_gallery: np.ndarray | None = None
    train_groups: np.ndarray | None = None
    val_paths: list[str] | None = None
    val_labels: np.ndarray | None = None
    layout: str = ""


class ImageDataset:
    """Base of the on-disk datasets: find the root and layout, read a :class:`Listing`, build splits.

    Subclasses set ``name`` and ``layouts`` ({layout name: human description of the files}) and
    implement ``detect(root) -> layout name | None`` and ``read(root, layout) -> Listing``. The root
    is ``<source_path>/<name>``, or ``<source_path>`` itself when that already holds the layout."""

    name = ""
    layouts: dict[str, str] = {}
    recall_at: tuple[int, ...] = (1, 2, 4, 8)  # the Recall@k ranks its papers report (the default metrics)

    def __init__(self, *, source_path: str, split: SplitOptions, images: ImageOptions) -> None:
        self.source_path = Path(source_path).expanduser()
        self.split = split
        self.images = images

    def detect(self, root: Path) -> str | None:
        raise NotImplementedError

    def read(self, root: Path, layout: str) -> Listing:
        raise NotImplementedError

    def candidates(self) -> list[Path]:
        return [self.source_path / self.name, self.source_path]

    def locate(self) -> tuple[Path, str]:
        for root in self.candidates():
            if root.is_dir():
                layout = self.detect(root)
                if layout is not None:
                    return root, layout
        expected = "; or ".join(f"{desc} ({name} layout)" for name, desc in self.layouts.items())
        raise ConfigError(
            f"{self.name}: no dataset found in {self.candidates()[0]} (nor in --source_path itself); "
            f"expected {expected}"
        )

    def listing(self) -> Listing:
        root, layout = self.locate()
        listing = self.read(root, layout)
        listing.layout = layout
        return listing

    def splits(self) -> dict[str, SplitDataset]:
        """SplitDatasets over the listed image files: reader (files or ``--data_cache``), the
        transforms for ``--augmentation`` and the backbone's crop, and the split dict."""
        listing, cfg = self.listing(), self.images
        val_paths = listing.val_paths or []
        all_paths = listing.train_paths + listing.test_paths + val_paths
        check_files_exist(all_paths, self.name)
        for part, paths in (("training", listing.train_paths), ("test", listing.test_paths)):
            if not paths:
                raise ConfigError(f"{self.name}: the {part} split is empty ({listing.layout} layout)")
        train_tf, eval_tf = build_transforms(
            cfg.augmentation, cfg.crop, cfg.resize, draft=cfg.decode == "reduced", dataset=self.name
        )
        reader: Callable[[str], Any] = FileReader(self.name)
        if cfg.cache:
            if cfg.cache_size < cfg.resize:
                raise ConfigError(
                    f"--data_cache_size {cfg.cache_size} is smaller than the evaluation resize {cfg.resize}"
                )
            # checks every image before building (a complete cache was built from these files)
            reader = ImageCache(cfg.cache, all_paths, cfg.cache_size, name=self.name, workers=cfg.workers)
        else:
            check_images_readable(all_paths, self.name)  # every split, before training starts
        train = SplitDataset(listing.train_paths, listing.train_labels, reader, name="training")
        test = SplitDataset(
            listing.test_paths,
            listing.test_labels,
            reader,
            is_query=listing.test_is_query,
            is_gallery=listing.test_is_gallery,
            name="testing",
        )
        validation = None
        if val_paths:
            validation = SplitDataset(val_paths, listing.val_labels, reader, name="validation")
        return make_splits(
            train,
            test,
            train_tf,
            eval_tf,
            self.split,
            self.name,
            groups=listing.train_groups,
            validation=validation,
        )


# ---- helpers of the on-disk layouts -------------------------------------------------------------


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """``path`` must exist; otherwise a ConfigError naming it and the expected layout."""
    if not path.is_file():
        raise ConfigError(f"{dataset}: missing {path} (expected for the {layout})")
    return path


def read_table(path: Path, n_columns: int, dataset: str, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a split file, each with at least ``n_columns`` fields."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) < n_columns:
                raise ConfigError(
                    f"{dataset}: {path} line {number}: expected {n_columns} columns, got {line.strip()!r}"
                )
            rows.append(fields)
    if not rows:
        raise ConfigError(f"{dataset}: {path} lists no images")
    return rows


def subfolders(root: Path) -> list[Path]:
    """The sub-folders of ``root``, sorted by name, hidden ones (``.*``, macOS ``._*``) skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[str]:
    """The image files directly in ``folder`` (by extension, any case), sorted, hidden ones skipped."""
    return sorted(
        str(p)
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def numbered_class_folders(images: Path, dataset: str) -> list[tuple[int, Path]]:
    """(class id, folder) for folders named ``<number>.<name>`` (or ``<number>_<name>``)."""
    out = []
    for folder in subfolders(images):
        match = re.match(r"^(\d+)[._ -]?", folder.name)
        if match is None:
            raise ConfigError(
                f"{dataset}: class folder {folder} does not start with its class number (expected NNN.Class_Name)"
            )
        out.append((int(match.group(1)), folder))
    return out


def images_of_classes(classes: Iterable[tuple[Any, Path]], dataset: str) -> tuple[list[str], np.ndarray]:
    """(image paths, one class label per image) for ``(label, folder)`` pairs. A class folder
    without images is a :class:`ConfigError` naming it (and how many such folders there are)."""
    paths: list[str] = []
    labels: list[Any] = []
    empty: list[Path] = []
    for label, folder in classes:
        files = list_images(folder)
        if not files:
            empty.append(folder)
        paths += files
        labels += [label] * len(files)
    if empty:
        more = f" ({len(empty)} empty class folders in all)" if len(empty) > 1 else ""
        raise ConfigError(
            f"{dataset}: class folder {empty[0]} holds no images ({' '.join(IMAGE_EXTENSIONS)}){more}; "
            f"add its images or remove the folder"
        )
    return paths, np.asarray(labels)


def split_by_class_id(paths: list[str], ids: np.ndarray, n_train_classes: int) -> Listing:
    """The zero-shot split: class ids ``1..n_train_classes`` train, the higher ids test."""
    train = ids <= n_train_classes
    p = np.asarray(paths, dtype=object)
    return Listing(list(p[train]), ids[train], list(p[~train]), ids[~train])
