"""Every dataset in every on-disk layout: split sizes, label ranges, the official class split,
query/gallery masks, validation splits, and the errors for broken layouts."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import architectures
import datasets
import parameters
from datasets.base import report_small_classes, train_val_masks
from datasets.transforms import UnreadableImageError
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError


def make_opt(name: str, source: Path, *extra: str) -> argparse.Namespace:
    return parameters.parse(
        ["--dataset", name, "--source_path", str(source), "--arch", "smallcnn", "--kernels", "0", *extra]
    )


def load(name: str, source: Path, *extra: str) -> dict:
    opt = make_opt(name, source, *extra)
    return datasets.select(name, opt, architectures.input_config(opt.arch))


def folders_of(split) -> set[str]:
    return {Path(p).parent.name for p in split.samples}


def check_counts(splits: dict, expected: dict) -> None:
    train, test, ev = splits["training"], splits["testing"], splits["evaluation"]
    assert len(train) == expected["train_images"] and len(ev) == expected["train_images"]
    assert len(test) == expected["test_images"]
    assert train.n_classes == expected["train_classes"] and test.n_classes == expected["test_classes"]
    for split in (train, test, ev):  # re-indexed 0..C-1 per split, every label used
        assert sorted(set(split.labels.tolist())) == list(range(split.n_classes))
    assert train.samples == ev.samples and train.transform is not ev.transform


CASES = {
    "cub200-study": ("cub200", fx.make_cub_study),
    "cub200-official": ("cub200", fx.make_cub_official),
    "cub200-official-flat": ("cub200", lambda r: fx.make_cub_official(r, nested=False)),
    "cars196-official": ("cars196", fx.make_cars_official),
    "cars196-study": ("cars196", fx.make_cars_study),
    "sop-study": ("online_products", fx.make_sop),
    "sop-official": ("online_products", lambda r: fx.make_sop(r, "official")),
    "folder-split": ("folder", fx.make_folder),
    "folder-flat": ("folder", lambda r: fx.make_folder(r, "flat")),
    "csv": ("csv", fx.make_csv),
}


@pytest.mark.parametrize("case", list(CASES))
def test_split_sizes_and_labels(tmp_path, case):
    name, maker = CASES[case]
    expected = maker(tmp_path)
    splits = load(name, tmp_path)
    check_counts(splits, expected)
    image, _, _ = splits["training"][0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)  # smallcnn: 32 crops
    assert splits["testing"][1][0].shape == (3, 32, 32)


def test_cub_split_follows_the_class_numbers_and_skips_resource_forks(tmp_path):
    fx.make_cub_study(tmp_path)
    splits = load("cub200", tmp_path / "cub200")  # --source_path may also point at the dataset itself
    assert folders_of(splits["training"]) == {
        "001.Black_footed_Albatross",
        "002.Laysan_Albatross",
        "003.Sooty_Albatross",
    }
    assert not any(Path(p).name.startswith(".") for p in splits["training"].samples)  # hidden files
    # labels follow the official id order, not the listing order
    first = [
        p for p, y in zip(splits["testing"].samples, splits["testing"].labels.tolist(), strict=True) if y == 0
    ]
    assert all("101." in p for p in first)


def test_cub_official_listing_order_does_not_matter(tmp_path):
    fx.make_cub_official(tmp_path)  # listed with class 103 first
    splits = load("cub200", tmp_path)
    train = splits["training"]
    by_label = {y: Path(p).parent.name[:3] for p, y in zip(train.samples, train.labels.tolist(), strict=True)}
    assert by_label == {0: "001", 1: "002", 2: "003"}


@pytest.mark.parametrize("layout", ["official", "study"])
def test_cars_split_uses_official_ids_not_folder_order(tmp_path, layout):
    expected = (fx.make_cars_official if layout == "official" else fx.make_cars_study)(tmp_path)
    splits = load("cars196", tmp_path)
    if layout == "study":
        assert folders_of(splits["training"]) == expected["train_names"]
        # the alphabetical order would have put e.g. "Audi TT RS" (id 100) into training
        assert "Audi TT RS Coupe 2012" in folders_of(splits["testing"])
    else:
        ids = sorted({int(Path(p).stem) for p in splits["training"].samples})
        assert ids == list(range(1, 13))  # the first three classes' 12 images (ids 1, 2, 3)


def test_cars_study_without_ids_warns_and_uses_sorted_folders(tmp_path):
    fx.make_cars_study(tmp_path, with_meta=False)
    with pytest.warns(UserWarning, match="sorted folder order"):
        splits = load("cars196", tmp_path)
    assert len(splits["training"]) == 12


@pytest.mark.parametrize("layout", ["study", "official", "official_anno"])
def test_inshop_query_gallery(tmp_path, layout):
    expected = fx.make_inshop(tmp_path, layout)
    splits = load("inshop", tmp_path)
    train, test = splits["training"], splits["testing"]
    assert len(train) == expected["train_images"] and train.n_classes == expected["train_classes"]
    assert (
        test.is_query.sum().item() == expected["queries"]
        and test.is_gallery.sum().item() == expected["gallery"]
    )
    assert not (test.is_query & test.is_gallery).any()
    assert test.n_classes == expected["test_classes"]
    # every query's item has gallery images with the same (re-indexed) label
    assert set(test.labels[test.is_query].tolist()) <= set(test.labels[test.is_gallery].tolist())
    queries = [Path(p).name for p in np.asarray(test.samples, dtype=object)[test.is_query.numpy()]]
    assert all(q.startswith("00_") for q in queries)


def test_csv_query_gallery_and_source_file(tmp_path):
    fx.make_csv(tmp_path, name="mine.csv")
    splits = load("csv", tmp_path / "csv" / "mine.csv")
    test = splits["testing"]
    assert test.is_query.sum() == 3 and test.is_gallery.sum() == 6
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # labels 30, 40, 50 -> 0, 1, 2


def test_csv_validation_rows(tmp_path):
    base = tmp_path / "csv"
    fx.make_csv(tmp_path, query_gallery=False)
    text = (base / "dataset.csv").read_text()
    # open-metric-learning style: train + validation, no test -> validation is the test split
    (base / "dataset.csv").write_text(text.replace(",test", ",validation"))
    splits = load("csv", tmp_path)
    assert len(splits["testing"]) == 9 and "validation" not in splits
    # train + val + test: val becomes the validation split
    lines = text.strip().splitlines()
    lines = [ln.replace(",train", ",val") if ln.startswith("imgs/2_") else ln for ln in lines]
    (base / "dataset.csv").write_text("\n".join(lines) + "\n")
    splits = load("csv", tmp_path)
    assert (
        len(splits["validation"]) == 3 and splits["training"].n_classes == 2 and len(splits["testing"]) == 9
    )


# ---- validation splits ---------------------------------------------------------------------------


def test_tv_split_by_classes_is_class_disjoint(tmp_path):
    fx.make_cub_study(tmp_path)
    splits = load("cub200", tmp_path, "--use_tv_split", "--tv_split_perc", "0.67")
    tr, va = splits["training"], splits["validation"]
    assert folders_of(tr).isdisjoint(folders_of(va))
    assert len(tr) + len(va) == 12 and tr.n_classes == 2 and va.n_classes == 1
    assert va.labels.tolist() == [0] * 4


def test_tv_split_by_samples_is_seeded(tmp_path):
    fx.make_cub_study(tmp_path)
    args = ("--use_tv_split", "--tv_split_by_samples", "--tv_split_perc", "0.5")
    a = load("cub200", tmp_path, *args, "--seed", "3")
    b = load("cub200", tmp_path, *args, "--seed", "3")
    assert a["validation"].samples == b["validation"].samples
    assert folders_of(a["training"]) == folders_of(a["validation"])  # every class on both sides
    assert len(a["training"]) == 6 and len(a["validation"]) == 6
    seeds = {tuple(load("cub200", tmp_path, *args, "--seed", str(s))["validation"].samples) for s in range(4)}
    assert len(seeds) > 1


def test_sop_class_split_within_super_classes(tmp_path):
    fx.make_sop(tmp_path)
    splits = load("online_products", tmp_path, "--use_tv_split", "--tv_split_perc", "0.5")
    supers = {n: {Path(p).parent.name for p in splits[n].samples} for n in ("training", "validation")}
    assert supers["training"] == supers["validation"] == {"bicycle_final", "chair_final"}
    assert splits["training"].n_classes == 2 and splits["validation"].n_classes == 2


def test_grouped_masks_by_hand():
    labels = np.array([0, 0, 1, 2, 3, 3, 4, 5])
    groups = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    train, val = train_val_masks(labels, 0.5, False, 0, groups)
    # group 1 classes {0,1,2}: floor(1.5)=1 -> class 0 trains; group 2 {3,4,5}: class 3 trains
    assert train.tolist() == [True, True, False, False, True, True, False, False]
    assert (val == ~train).all()


# ---- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cub200", "cars196", "online_products", "inshop", "folder", "csv"])
def test_missing_dataset_names_the_expected_layout(tmp_path, name):
    (tmp_path / name / "something_else").mkdir(parents=True)
    with pytest.raises(ConfigError, match="expected") as err:
        load(name, tmp_path)
    assert "\n" not in str(err.value) and "layout" in str(err.value)


def test_missing_split_file_is_named(tmp_path):
    fx.make_cub_official(tmp_path)
    (tmp_path / "cub200" / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(ConfigError, match=r"image_class_labels\.txt"):
        load("cub200", tmp_path)


def test_sop_missing_test_file(tmp_path):
    fx.make_sop(tmp_path)
    (tmp_path / "online_products" / "Info_Files" / "Ebay_test.txt").unlink()
    with pytest.raises(ConfigError, match=r"Ebay_test\.txt"):
        load("online_products", tmp_path)


def test_cars_annotations_without_images_folder(tmp_path):
    fx.make_cars_official(tmp_path)
    (tmp_path / "cars196" / "car_ims").rename(tmp_path / "cars196" / "car_images")
    with pytest.raises(ConfigError, match="car_ims"):
        load("cars196", tmp_path)


def test_inshop_without_img_folder(tmp_path):
    fx.make_inshop(tmp_path)
    (tmp_path / "inshop" / "img").rename(tmp_path / "inshop" / "images")
    with pytest.raises(ConfigError, match="img"):
        load("inshop", tmp_path)


def test_listed_but_missing_images_are_reported(tmp_path):
    fx.make_sop(tmp_path)
    victim = next((tmp_path / "online_products" / "images" / "chair_final").iterdir())
    victim.unlink()
    with pytest.raises(ConfigError, match=rf"1 of 24 listed images are missing.*{victim.name}"):
        load("online_products", tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    fx.make_cub_study(tmp_path)
    splits = load("cub200", tmp_path)
    victim = Path(splits["training"].samples[0])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a jpeg at all")
    for split in ("training", "evaluation"):
        with pytest.raises(UnreadableImageError, match=str(victim)):
            splits[split][0]
    assert issubclass(UnreadableImageError, ConfigError)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("path,label,split", "file,label,split"), "lacks the column"),
        (lambda t: t.replace(",test", ",holdout"), "unknown split"),
        (lambda t: t.replace(",is_query,is_gallery", ",is_query,other"), "partner"),
        (lambda t: t.replace(",1,0\n", ",maybe,0\n", 1), "boolean"),
        (lambda t: t + "extra.jpg,1\n", r"row \d+ has no value for \['split'"),
    ],
)
def test_csv_errors(tmp_path, edit, match):
    fx.make_csv(tmp_path)
    file = tmp_path / "csv" / "dataset.csv"
    file.write_text(edit(file.read_text()))
    with pytest.raises(ConfigError, match=match):
        load("csv", tmp_path)


def test_classes_smaller_than_samples_per_class_are_reported(tmp_path):
    fx.make_cub_study(tmp_path)
    with pytest.warns(UserWarning, match=r"3 training class\(es\) have fewer than --samples_per_class 5"):
        load("cub200", tmp_path, "--samples_per_class", "5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("cub200", tmp_path, "--samples_per_class", "4")
    with pytest.warns(UserWarning, match=r"class 1: 1\)"):
        assert report_small_classes(np.array([0, 0, 1, 2, 2, 2]), 2) == [1]


def test_folder_val_subfolder_is_the_validation_split(tmp_path):
    fx.make_folder(tmp_path)
    fx.write_jpeg(tmp_path / "folder" / "val" / "fox" / "a.jpg", 1)
    fx.write_jpeg(tmp_path / "folder" / "val" / "fox" / "b.jpg", 2)
    splits = load("folder", tmp_path, "--use_tv_split")  # the given val/ wins over carving one out
    assert len(splits["validation"]) == 2 and len(splits["training"]) == 9
    assert splits["validation"].labels.tolist() == [0, 0]
