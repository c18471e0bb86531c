"""iNaturalist 2018 with Smooth-AP's DML split files (``Inat_dataset_splits/Inaturalist_{train,
test}_set1.txt``, one ``train_val2018/<supercategory>/<category id>/<hash>.jpg`` per line): split
sizes and labels on a fixture in the published layout, the zero-shot class split, the validation
split within supercategories, both layouts, one-line errors, and the speed of a full-size listing."""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import architectures
import datasets
import main
import parameters
from datasets.inaturalist import INaturalist
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError

TRAIN_FILE, TEST_FILE = "Inaturalist_train_set1.txt", "Inaturalist_test_set1.txt"


def make_opt(source: Path, *extra: str) -> argparse.Namespace:
    return parameters.parse(
        [
            "--dataset",
            "inaturalist",
            "--source_path",
            str(source),
            "--arch",
            "smallcnn",
            "--kernels",
            "0",
            *extra,
        ]
    )


def load(source: Path, *extra: str) -> dict:
    opt = make_opt(source, *extra)
    return datasets.select("inaturalist", opt, architectures.input_config(opt.arch))


def listing_of(source: Path):
    """Only the listing (layout detection + split files); no image is opened."""
    return INaturalist(source_path=str(source), split=None, images=None).listing()


def one_line_error(call, *args) -> str:
    with pytest.raises(ConfigError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def category_of(path: str) -> int:
    return int(Path(path).parent.name)


def categories(split) -> set[int]:
    return {category_of(p) for p in split.samples}


# ---- sizes, labels, layouts ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["official", "flat"])
def test_split_sizes_labels_and_an_image(tmp_path, layout):
    expected = fx.make_inaturalist(tmp_path, layout)
    assert listing_of(tmp_path).layout == layout
    splits = load(tmp_path)
    train, ev, test = splits["training"], splits["evaluation"], splits["testing"]
    assert len(train) == len(ev) == expected["train_images"] == 15
    assert len(test) == expected["test_images"] == 7
    assert (
        train.n_classes == expected["train_classes"] == 6 and test.n_classes == expected["test_classes"] == 3
    )
    for split in (train, ev, test):  # re-indexed 0..C-1 per split, every label used
        assert sorted(set(split.labels.tolist())) == list(range(split.n_classes))
    assert "validation" not in splits and test.is_query is None  # leave-one-out evaluation, as Smooth-AP
    image, label, index = train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)  # smallcnn: 32 crops
    assert test[6][0].shape == (3, 32, 32) and index == 0 and 0 <= label < 6


def test_listing_follows_the_published_lines(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    listing = listing_of(tmp_path)
    base = expected["base"]
    # every listed path resolves under the dataset folder, as the line gives it
    for file, paths in ((TRAIN_FILE, listing.train_paths), (TEST_FILE, listing.test_paths)):
        lines = (expected["split_folder"] / file).read_text().split()
        assert paths == [str(base / line) for line in lines]
        assert all(line.startswith("train_val2018/") for line in lines)
    # the raw label is the category folder (the iNat category id), the group its supercategory
    assert listing.train_labels.tolist() == [category_of(p) for p in listing.train_paths]
    assert listing.test_labels.tolist() == [category_of(p) for p in listing.test_paths]
    assert listing.train_groups.tolist() == [Path(p).parent.parent.name for p in listing.train_paths]
    assert set(listing.train_labels.tolist()) == expected["train_ids"] == {7477, 7390, 6500, 2761, 3001, 1012}
    assert set(listing.test_labels.tolist()) == expected["test_ids"] == {7100, 2900, 5000}
    assert expected["train_ids"].isdisjoint(expected["test_ids"])  # zero-shot: unseen test species
    for path, label in zip(listing.train_paths, listing.train_labels.tolist(), strict=True):
        assert expected["class_of"][path] == label


def test_labels_follow_the_category_ids_and_the_classes_are_disjoint(tmp_path):
    fx.make_inaturalist(tmp_path)  # lines interleave the classes: file order is not class order
    splits = load(tmp_path)

    def by_label(split) -> dict[int, int]:
        pairs = {(y, category_of(p)) for p, y in zip(split.samples, split.labels.tolist(), strict=True)}
        assert len(pairs) == split.n_classes  # one category per label
        return dict(pairs)

    assert by_label(splits["training"]) == {0: 1012, 1: 2761, 2: 3001, 3: 6500, 4: 7390, 5: 7477}
    assert by_label(splits["testing"]) == {0: 2900, 1: 5000, 2: 7100}
    assert categories(splits["training"]).isdisjoint(categories(splits["testing"]))


def test_validation_split_is_made_within_supercategories(tmp_path):
    fx.make_inaturalist(tmp_path)
    splits = load(tmp_path, "--use_tv_split", "--tv_split_perc", "0.5")
    # Plantae {6500, 7390, 7477}: floor(1.5) = 1 trains; Aves {2761, 3001}: 1; Insecta {1012}: its
    # only class trains. Without the groups the first 3 ids overall {1012, 2761, 3001} would train.
    assert categories(splits["training"]) == categories(splits["evaluation"]) == {1012, 2761, 6500}
    assert categories(splits["validation"]) == {3001, 7390, 7477}
    assert len(splits["training"]) == 2 + 3 + 3 and len(splits["validation"]) == 2 + 2 + 3
    supers = {k: {Path(p).parent.parent.name for p in splits[k].samples} for k in ("training", "validation")}
    assert supers == {"training": {"Plantae", "Aves", "Insecta"}, "validation": {"Plantae", "Aves"}}
    assert categories(splits["testing"]) == {2900, 5000, 7100}  # the test split is untouched


def test_source_path_may_be_the_dataset_folder_itself(tmp_path):
    fx.make_inaturalist(tmp_path, "flat")
    assert len(load(tmp_path / "inaturalist")["training"]) == 15


def test_complete_split_files_win_over_a_stray_one(tmp_path):
    expected = fx.make_inaturalist(tmp_path, "flat")
    stray = expected["base"] / "Inat_dataset_splits"
    stray.mkdir()
    (stray / TRAIN_FILE).write_text((expected["base"] / TRAIN_FILE).read_text())
    assert listing_of(tmp_path).layout == "flat"


def test_windows_line_ends_bom_blank_lines_and_absolute_paths(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    before = listing_of(tmp_path)
    file = expected["split_folder"] / TRAIN_FILE
    lines = file.read_text().split()
    lines[2] = str(expected["base"] / lines[2])  # an absolute path is used as listed
    file.write_bytes(("\ufeff" + "\r\n".join(["", *lines[:5], "  ", *lines[5:]]) + "\r\n\r\n").encode())
    after = listing_of(tmp_path)
    assert after.train_paths == before.train_paths
    assert after.train_labels.tolist() == before.train_labels.tolist()


def test_recall_ranks_are_smooth_aps():
    assert datasets.REGISTRY.get("inaturalist").recall_at == (1, 4, 16, 32)
    metrics = parameters.parse(["--dataset", "inaturalist"]).evaluation_metrics  # the run's default
    assert [int(m.split("@")[1]) for m in metrics if m.startswith("e_recall@")] == [1, 4, 16, 32]


@pytest.mark.slow
def test_one_epoch_of_main_with_the_validation_split_and_smooth_aps_ranks(tmp_path):
    fx.make_inaturalist(tmp_path)
    summary = main.main(
        [
            *("--dataset", "inaturalist", "--source_path", str(tmp_path), "--arch", "smallcnn_normalize"),
            *(
                "--kernels",
                "0",
                "--bs",
                "4",
                "--samples_per_class",
                "2",
                "--n_epochs",
                "1",
                "--device",
                "cpu",
            ),
            *(
                "--save_path",
                str(tmp_path / "runs"),
                "--savename",
                "run",
                "--no_progress",
                "--no_train_metrics",
            ),
            *("--use_tv_split", "--tv_split_perc", "0.5", "--evaluation_metrics", "e_recall@1"),
        ]
    )
    assert summary["selection_split"] == "validation"
    assert {k: (v["images"], v["classes"]) for k, v in summary["splits"].items()} == {
        "training": (8, 3),
        "evaluation": (8, 3),
        "validation": (7, 3),
        "testing": (7, 3),
    }
    assert 0.0 <= summary["metrics"]["testing"]["e_recall@1"] <= 1.0


# ---- errors ----------------------------------------------------------------------------------------


def test_no_split_files_names_both_layouts(tmp_path):
    (tmp_path / "inaturalist" / "train_val2018").mkdir(parents=True)
    message = one_line_error(load, tmp_path)
    assert "Inat_dataset_splits/Inaturalist_train_set1.txt" in message
    assert "(official layout)" in message and "(flat layout)" in message


@pytest.mark.parametrize("layout", ["official", "flat"])
def test_a_missing_split_file_is_named_with_the_accepted_layouts(tmp_path, layout):
    expected = fx.make_inaturalist(tmp_path, layout)
    (expected["split_folder"] / TEST_FILE).unlink()
    message = one_line_error(listing_of, tmp_path)
    assert message.startswith(f"inaturalist: missing {expected['split_folder'] / TEST_FILE}; expected ")
    assert "(official layout)" in message and "(flat layout)" in message


@pytest.mark.parametrize(
    "bad",
    [
        "train_val2018/Plantae/7477/0a1b.jpg 7477",  # a second column
        "train_val2018/Plantae/7477/0a1b\t.jpg",
        "train_val2018/Plantae/Rosa/0a1b.jpg",  # category folder not numeric
        "train_val2018/Plantae/७४/0a1b.jpg",  # digits, but not ASCII ones
        "7477/0a1b.jpg",  # no supercategory
        "0a1b.jpg",
        "train_val2018/Plantae/7477/",  # no image name
        "train_val2018/Plantae//7477/0a1b.jpg",
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, bad):
    expected = fx.make_inaturalist(tmp_path)
    file = expected["split_folder"] / TEST_FILE
    lines = file.read_text().split("\n")
    lines[3] = bad  # line 5 of the file after the blank line inserted before it
    file.write_text("\n".join(["", *lines]))
    message = one_line_error(listing_of, tmp_path)
    assert re.fullmatch(
        re.escape(f"inaturalist: {file} line 5: expected one image path ")
        + r"train_val2018/<supercategory>/<category id>/<image>\.jpg \(numeric category folder\), got "
        + re.escape(repr(bad.strip())),
        message,
    ), message


def test_an_empty_split_file(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    (expected["split_folder"] / TRAIN_FILE).write_text("\n  \n")
    assert one_line_error(listing_of, tmp_path) == (
        f"inaturalist: {expected['split_folder'] / TRAIN_FILE} lists no images"
    )


def test_a_missing_image_folder_is_named(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    (expected["base"] / "train_val2018").rename(expected["base"] / "images")
    message = one_line_error(load, tmp_path)
    assert message.startswith(
        f"inaturalist: missing folder {expected['base'] / 'train_val2018'} (the paths in {TRAIN_FILE} "
        "start with train_val2018/, e.g. train_val2018/Plantae/7477/"
    )
    assert "official layout" in message


def test_listed_but_missing_images_are_reported_like_every_dataset(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    victim = sorted(expected["class_of"])[4]
    os.remove(victim)
    message = one_line_error(load, tmp_path)
    assert re.fullmatch(
        rf"inaturalist: 1 of 22 listed images are missing, e\.g\. \[{re.escape(repr(victim))}\]", message
    )


def test_a_category_in_both_splits(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    train = (expected["split_folder"] / TRAIN_FILE).read_text()
    test = expected["split_folder"] / TEST_FILE
    test.write_text(test.read_text() + train.split()[0] + "\n")  # a 7477 image listed for testing too
    assert one_line_error(listing_of, tmp_path) == (
        f"inaturalist: 1 categories (e.g. 7477) are listed in both {TRAIN_FILE} and {TEST_FILE}; "
        "the DML split has disjoint classes"
    )


def test_a_category_under_two_supercategories(tmp_path):
    expected = fx.make_inaturalist(tmp_path)
    file = expected["split_folder"] / TRAIN_FILE
    file.write_text(file.read_text() + "train_val2018/Aves/7477/0a1b.jpg\n")
    assert one_line_error(listing_of, tmp_path) == (
        f"inaturalist: {file}: category 7477 is listed under two supercategories (Aves, Plantae)"
    )


# ---- full size -------------------------------------------------------------------------------------


def test_a_full_size_listing_is_fast_and_touches_no_image(tmp_path, monkeypatch):
    """325,846 + 136,093 lines over 5,690 + 2,452 categories in 14 supercategories: read in a
    second or so of CPU, with a handful of file-system calls (none per image)."""
    supers = ["Plantae", "Insecta", "Aves", "Actinopterygii", "Fungi", "Reptilia", "Mollusca"]
    supers += ["Mammalia", "Animalia", "Amphibia", "Arachnida", "Chromista", "Protozoa", "Bacteria"]
    base = tmp_path / "inaturalist"
    (base / "Inat_dataset_splits").mkdir(parents=True)
    (base / "train_val2018").mkdir()
    for file, n_images, first, n_classes in (
        (TRAIN_FILE, 325_846, 0, 5_690),
        (TEST_FILE, 136_093, 5_690, 2_452),
    ):
        cats = first + np.arange(n_images) % n_classes
        lines = [f"train_val2018/{supers[c % 14]}/{c}/{i:032x}.jpg" for i, c in enumerate(cats.tolist())]
        (base / "Inat_dataset_splits" / file).write_text("\n".join(lines) + "\n")
    calls = []
    for name in ("stat", "lstat", "listdir", "scandir"):
        real = getattr(os, name)
        monkeypatch.setattr(
            os, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    start = time.process_time()
    listing = listing_of(tmp_path)
    seconds = time.process_time() - start
    monkeypatch.undo()
    assert len(listing.train_paths) == 325_846 and len(listing.test_paths) == 136_093
    assert (
        len(set(listing.train_labels.tolist())) == 5_690 and len(set(listing.test_labels.tolist())) == 2_452
    )
    assert len(set(listing.train_groups.tolist())) == 14
    assert len(calls) < 20, calls
    assert seconds < 10, f"{seconds:.1f} s of CPU to read the split files"
