"""CARS196 as it can be downloaded today: the devkit release in torchvision's / Kaggle's layout
(``cars_train/``, ``cars_test/``, ``devkit/*.mat``, ``cars_test_annos_withlabels.mat``) and
Kaggle's class-name folders (``car_data/car_data/{train,test}/<class name>/`` + ``names.csv``).
Both must give the DML split (official class ids 1-98 train, 99-196 test) over the union of the
two official halves, and an unrecognised folder must name every accepted layout in one line."""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

import architectures
import datasets
import parameters
from datasets.cars196 import Cars196
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError

LAYOUT_NAMES = ("official", "study", "torchvision", "class_folders")


def make_opt(source: Path, *extra: str) -> argparse.Namespace:
    return parameters.parse(
        ["--dataset", "cars196", "--source_path", str(source), "--arch", "smallcnn", "--kernels", "0", *extra]
    )


def load(source: Path, *extra: str) -> dict:
    opt = make_opt(source, *extra)
    return datasets.select("cars196", opt, architectures.input_config(opt.arch))


def listing_of(source: Path):
    """Only the listing (layout detection + split files); no image is decoded."""
    return Cars196(source_path=str(source), split=None, images=None).listing()


def error_of(source: Path) -> str:
    with pytest.raises(ConfigError) as err:
        listing_of(source)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def check_split(listing, expected: dict) -> None:
    """The exact images on each side, and each image's raw label is its official class id."""
    assert set(listing.train_paths) == expected["train_paths"]
    assert set(listing.test_paths) == expected["test_paths"]
    assert len(listing.train_paths) == expected["train_images"] == len(expected["train_paths"])
    assert len(listing.test_paths) == expected["test_images"] == len(expected["test_paths"])
    for paths, labels in (
        (listing.train_paths, listing.train_labels),
        (listing.test_paths, listing.test_labels),
    ):
        assert [expected["class_of"][p] for p in paths] == [int(y) for y in labels]
    assert set(listing.train_labels.tolist()) <= set(range(1, 99))
    assert set(listing.test_labels.tolist()) <= set(range(99, 197))


def check_reindexed(splits: dict, expected: dict) -> None:
    """Labels 0..C-1 per split, in official class-id order."""
    for name, ids_key in (("training", "train_images"), ("testing", "test_images")):
        split = splits[name]
        assert len(split) == expected[ids_key]
        ids = np.asarray([expected["class_of"][p] for p in split.samples])
        assert split.labels.tolist() == np.searchsorted(np.unique(ids), ids).tolist()
    assert splits["training"].n_classes == expected["train_classes"]
    assert splits["testing"].n_classes == expected["test_classes"]
    assert splits["evaluation"].samples == splits["training"].samples


def halves_of(paths, markers: tuple[str, str]) -> set[str]:
    return {m for p in paths for m in markers if f"/{m}/" in p}


# ---- torchvision / Kaggle devkit layout ---------------------------------------------------------

TORCHVISION_CASES = {
    "torchvision": {},  # exactly torchvision's StanfordCars folder (test labels at the root)
    "kaggle-nested": {"nested": True, "test_annos": "devkit"},  # cars_train/cars_train/, labels in devkit/
    "stanford_cars-wrapper": {"wrapper": True},  # <root>/stanford_cars/..., as torchvision's root
    "download-suffix": {"test_annos": "devkit", "suffix": " (1)"},  # cars_test_annos_withlabels (1).mat
}


@pytest.mark.parametrize("case", list(TORCHVISION_CASES))
def test_torchvision_layout_split_over_both_halves(tmp_path, case):
    expected = fx.make_cars_torchvision(tmp_path, **TORCHVISION_CASES[case])
    listing = listing_of(tmp_path)
    assert listing.layout == "torchvision"
    check_split(listing, expected)
    # the DML split takes both official halves: every class has images from cars_train and cars_test
    for paths in (listing.train_paths, listing.test_paths):
        assert halves_of(paths, ("cars_train", "cars_test")) == {"cars_train", "cars_test"}


def test_torchvision_layout_loads_end_to_end(tmp_path):
    expected = fx.make_cars_torchvision(tmp_path, nested=True)
    splits = load(tmp_path / "cars196")  # --source_path may point at the dataset itself
    check_reindexed(splits, expected)
    image, _, _ = splits["testing"][0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)


def test_torchvision_root_itself_as_source_path(tmp_path):
    """``--source_path`` = torchvision's root, the folder that holds ``stanford_cars/``."""
    expected = fx.make_cars_torchvision(tmp_path, wrapper=True)
    check_split(listing_of(tmp_path / "cars196"), expected)


# ---- class-name folders ------------------------------------------------------------------------------

CLASS_FOLDER_CASES = {
    "kaggle-names.csv": {},  # car_data/car_data/{train,test}/<name>/ + names.csv
    "flat-cars_meta": {"kaggle": False, "names": "meta"},  # {train,test}/<name>/ + devkit/cars_meta.mat
    "numbered-folders": {"names": None, "numbered": True},  # "0001 <name>": the id is the number
}


@pytest.mark.parametrize("case", list(CLASS_FOLDER_CASES))
def test_class_folder_layout_split_by_official_ids(tmp_path, case):
    expected = fx.make_cars_class_folders(tmp_path, **CLASS_FOLDER_CASES[case])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official ids are known: no sort-order warning
        listing = listing_of(tmp_path)
    assert listing.layout == "class_folders"
    check_split(listing, expected)
    folders = {Path(p).parent.name for p in listing.train_paths}
    assert folders == expected["train_folders"]
    # alphabetically "Audi TT RS" and "BMW M3" (ids 100, 99) come before "Mazda" and "Zeta" (3, 1)
    assert {Path(p).parent.name for p in listing.test_paths} == expected["test_folders"]
    assert any("Ram C-V Cargo Van Minivan 2012" in f for f in expected["test_folders"])  # "C/V" on disk
    for paths in (listing.train_paths, listing.test_paths):
        assert halves_of(paths, ("train", "test")) == {"train", "test"}


def test_class_folder_layout_loads_end_to_end(tmp_path):
    expected = fx.make_cars_class_folders(tmp_path)
    splits = load(tmp_path)
    check_reindexed(splits, expected)
    assert splits["training"][0][0].shape == (3, 32, 32)


def test_class_folders_without_ids_warn_and_split_the_sorted_names(tmp_path):
    fx.make_cars_class_folders(tmp_path, names=None)
    with pytest.warns(UserWarning, match=r"first half of the 7 folders in sorted order train"):
        listing = listing_of(tmp_path)
    train = {Path(p).parent.name for p in listing.train_paths}
    assert train == {"Acura RL Sedan 2012", "Audi TT RS Coupe 2012", "BMW M3 Coupe 2012"}


def test_sorted_fallback_with_196_classes_is_the_official_split_without_warning():
    """With all 196 classes the sorted fallback needs no warning: for the official names the first
    98 in sorted order are ids 1-98 (the module docstring explains why)."""
    names = [f"Make{i:03d} Model {2000 + i % 13}" for i in range(196)]
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(196)]
    dataset = Cars196(source_path="/nonexistent", split=None, images=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = dataset._folder_class_ids([Path("/nonexistent")], shuffled, "class_folders")
    assert ids == [names.index(n) + 1 for n in shuffled]


# ---- errors ------------------------------------------------------------------------------------------


def test_unrecognised_folder_names_every_layout_in_one_line(tmp_path):
    (tmp_path / "cars196" / "something_else").mkdir(parents=True)
    message = error_of(tmp_path)
    assert message.startswith(f"cars196: no dataset found in {tmp_path / 'cars196'}")
    for layout in LAYOUT_NAMES:
        assert f"({layout} layout)" in message, message
    for part in (
        "car_ims/",
        "cars_annos.mat",
        "images/<class folder>",
        "cars_train/",
        "cars_test/",
        "devkit/cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
        "train/<class name>",
        "test/<class name>",
    ):
        assert part in message, (part, message)
    with pytest.raises(ConfigError, match="torchvision layout"):  # the full pipeline says the same
        load(tmp_path)


def test_only_one_official_half_is_an_error(tmp_path):
    expected = fx.make_cars_torchvision(tmp_path)
    for file in (expected["base"] / "cars_test").iterdir():
        file.unlink()
    (expected["base"] / "cars_test").rmdir()
    message = error_of(tmp_path)
    assert re.search(r"missing folder \S*cars196/cars_test \(.*torchvision layout.*both halves\)", message)


def test_test_labels_missing_points_at_the_labelled_file(tmp_path):
    fx.make_cars_torchvision(tmp_path, test_annos=None)  # only devkit/cars_test_annos.mat (no labels)
    message = error_of(tmp_path)
    assert "missing" in message and "cars_test_annos_withlabels.mat" in message
    assert "cars_test_annos.mat has no class labels" in message


def test_kaggle_images_with_cars_annos_but_no_devkit(tmp_path):
    """A mirror with cars_annos.mat next to cars_train/ + cars_test/ but no devkit: the per-half
    annotations are what is missing (not car_ims/, which this download does not have)."""
    expected = fx.make_cars_torchvision(tmp_path)
    base = expected["base"]
    (base / "devkit" / "cars_train_annos.mat").rename(base / "cars_annos.mat")
    message = error_of(tmp_path)
    assert "cars_train_annos.mat" in message and "torchvision layout" in message
    assert "car_ims" not in message.split("(expected")[0]


def test_class_ids_outside_1_to_196_are_reported(tmp_path):
    expected = fx.make_cars_torchvision(tmp_path)
    annos = expected["base"] / "devkit" / "cars_train_annos.mat"
    records = scipy.io.loadmat(str(annos), squeeze_me=True)["annotations"]
    records["class"][0] = 0  # 0-based ids, as some converted copies store them
    scipy.io.savemat(str(annos), {"annotations": records})
    assert re.search(r"cars_train_annos\.mat has class ids outside 1\.\.196 \(e\.g\. 0\)", error_of(tmp_path))


def test_annotations_without_class_field(tmp_path):
    expected = fx.make_cars_torchvision(tmp_path)
    base = expected["base"]
    (base / "cars_test_annos_withlabels.mat").unlink()
    (base / "devkit" / "cars_test_annos.mat").rename(base / "cars_test_annos_withlabels.mat")
    message = error_of(tmp_path)
    assert "cars_test_annos_withlabels.mat have no 'class' field" in message


def test_class_folder_not_in_names_csv(tmp_path):
    fx.make_cars_class_folders(tmp_path)
    fx.write_jpeg(tmp_path / "cars196/car_data/car_data/train/Tesla Roadster 2008/00999.jpg", 1)
    message = error_of(tmp_path)
    assert "'Tesla Roadster 2008'" in message and "names.csv" in message


def test_empty_class_folder_in_class_folder_layout(tmp_path):
    fx.make_cars_class_folders(tmp_path, kaggle=False, names="meta")
    empty = tmp_path / "cars196" / "test" / "BMW M3 Coupe 2012"
    for file in empty.iterdir():
        file.unlink()
    message = error_of(tmp_path)
    assert message.startswith(f"cars196: class folder {empty} holds no images")
