"""split_summary: sizes, query/gallery counts and a membership hash that identifies a class split
independently of where the files live."""

from __future__ import annotations

import numpy as np

from datasets.base import SplitDataset, split_summary


def make(root: str, labels, is_query=None, is_gallery=None) -> SplitDataset:
    samples = [f"{root}/class_{c}/img_{i}.jpg" for i, c in enumerate(labels)]
    return SplitDataset(samples, labels, load=str, is_query=is_query, is_gallery=is_gallery)


def test_sizes_and_query_gallery_counts():
    q = np.array([True, False, True, False, False])
    info = split_summary({"testing": make("/a", [3, 3, 7, 7, 9], q, ~q), "training": make("/a", [1, 1, 2])})
    assert info["testing"] == {
        "images": 5,
        "classes": 3,
        "queries": 2,
        "gallery": 3,
        "hash": info["testing"]["hash"],
    }
    assert info["training"]["images"] == 3 and "queries" not in info["training"]
    assert len(info["testing"]["hash"]) == 16


def test_hash_depends_on_membership_not_on_location_or_order():
    a = split_summary({"s": make("/data/cub", [1, 1, 2])})["s"]["hash"]
    moved = split_summary({"s": make("/mnt/elsewhere/cub", [1, 1, 2])})["s"]["hash"]
    assert a == moved
    shuffled = SplitDataset(
        ["/x/class_2/img_2.jpg", "/x/class_1/img_0.jpg", "/x/class_1/img_1.jpg"], [2, 1, 1], load=str
    )
    assert split_summary({"s": shuffled})["s"]["hash"] == a
    other = split_summary({"s": make("/data/cub", [1, 2, 2])})["s"]["hash"]
    assert other != a
