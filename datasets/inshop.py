"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., CVPR 2016): 52,712 images of 7,982 items.

Split as published in ``list_eval_partition.txt`` (``image_name item_id evaluation_status`` after
a count line and a header line): 3,997 training items (25,882 images); the test split holds the
14,218 **query** and 12,612 **gallery** images (3,985 items), marked by the split's boolean
``is_query``/``is_gallery`` masks: evaluation retrieves each query among the gallery only. Labels
are re-indexed 0..C-1 per split (over query ∪ gallery for the test split).

Layouts (found automatically under ``<source_path>/inshop`` or ``<source_path>``), both with the
images under ``<root>/img/`` (the listed paths start with ``img/``):

* ``study``: ``<root>/Eval/list_eval_partition.txt`` (the layout of the study authors' later
  code and of most DML repositories);
* ``official``: ``<root>/list_eval_partition.txt`` or ``<root>/Anno/list_eval_partition.txt``
  (the DeepFashion release as downloaded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.base import ImageDataset, Listing, read_table
from utilities.errors import ConfigError

PARTITION = "list_eval_partition.txt"


class InShop(ImageDataset):
    """DeepFashion In-Shop: train items; test = query + gallery (study or official layout)."""

    name = "inshop"
    recall_at = (1, 10, 20, 30, 40)
    layouts = {
        "study": f"<root>/Eval/{PARTITION} and <root>/img/",
        "official": f"<root>[/Anno]/{PARTITION} and <root>/img/",
    }

    def detect(self, root: Path) -> str | None:
        if (root / "Eval" / PARTITION).is_file():
            return "study"
        if (root / PARTITION).is_file() or (root / "Anno" / PARTITION).is_file():
            return "official"
        return None

    def read(self, root: Path, layout: str) -> Listing:
        if layout == "study":
            path = root / "Eval" / PARTITION
        else:
            path = root / PARTITION if (root / PARTITION).is_file() else root / "Anno" / PARTITION
        if not (root / "img").is_dir():
            raise ConfigError(
                f"{self.name}: missing folder {root / 'img'} ({layout} layout: {self.layouts[layout]})"
            )
        rows = read_table(path, 3, self.name, skip=2)
        status = np.asarray([r[2] for r in rows])
        unknown = sorted(set(status) - {"train", "query", "gallery"})
        if unknown:
            raise ConfigError(
                f"{self.name}: {path}: unknown evaluation_status {unknown} (train, query, gallery)"
            )
        paths = np.asarray([str(root / r[0]) for r in rows], dtype=object)
        ids = np.asarray([r[1] for r in rows])  # item ids like id_00000002 (re-indexed per split)
        train, test = status == "train", status != "train"
        return Listing(
            train_paths=list(paths[train]),
            train_labels=ids[train],
            test_paths=list(paths[test]),
            test_labels=ids[test],
            test_is_query=status[test] == "query",
            test_is_gallery=status[test] == "gallery",
        )
