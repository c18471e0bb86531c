"""CUB-200-2011 (Wah et al., 2011): 11,788 images of 200 bird species.

Zero-shot split (the standard one, and the study's): official class ids 1-100 train (5,864
images), 101-200 test (5,924 images); labels re-indexed 0..99 in each split. Bounding boxes are
not used (as in the study).

Layouts (found automatically under ``<source_path>/cub200`` or ``<source_path>``):

* ``study``: ``images/<NNN.Class_Name>/<image>.jpg`` (the reference study's archive); the class id
  is the number ``NNN`` of the folder name, so the split never depends on the folder sort order;
  macOS ``._*`` resource forks are skipped;
* ``official``: the ``CUB_200_2011`` release (at the root or in ``CUB_200_2011/``): ``images.txt``
  (``<image id> <relative path>``), ``image_class_labels.txt`` (``<image id> <class id>``),
  ``classes.txt`` (``<class id> <name>``) and ``images/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from datasets.base import ImageDataset, Listing, read_table, require_file
from datasets.images import IMAGE_EXTENSIONS
from utilities.errors import ConfigError

N_TRAIN_CLASSES = 100


def list_class_folders(images: Path, dataset: str) -> list[tuple[int, Path]]:
    """(class id, folder) for folders named ``<number>.<name>`` (or ``<number>_<name>``)."""
    out = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = re.match(r"^(\d+)[._ -]?", folder.name)
        if match is None:
            raise ConfigError(
                f"{dataset}: class folder {folder} does not start with its class number (expected NNN.Class_Name)"
            )
        out.append((int(match.group(1)), folder))
    return out


def list_images(folder: Path) -> list[str]:
    return sorted(
        str(p)
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def split_by_class_id(
    paths: list[str], ids: np.ndarray, n_train_classes: int
) -> tuple[list, np.ndarray, list, np.ndarray]:
    train = ids <= n_train_classes
    p = np.asarray(paths, dtype=object)
    return list(p[train]), ids[train], list(p[~train]), ids[~train]


class CUB200(ImageDataset):
    """CUB-200-2011: classes 1-100 train, 101-200 test (study or official layout)."""

    name = "cub200"
    layouts = {
        "study": "<root>/images/<NNN.Class_Name>/*.jpg",
        "official": "<root>[/CUB_200_2011]/images.txt, image_class_labels.txt, classes.txt and images/",
    }

    def detect(self, root: Path) -> str | None:
        for base in (root, root / "CUB_200_2011"):
            if (base / "images.txt").is_file():
                return "official"
        if (root / "images").is_dir():
            return "study"
        return None

    def read(self, root: Path, layout: str) -> Listing:
        if layout == "study":
            paths, ids = [], []
            for class_id, folder in list_class_folders(root / "images", self.name):
                files = list_images(folder)
                paths += files
                ids += [class_id] * len(files)
            if not paths:
                raise ConfigError(
                    f"{self.name}: no images under {root / 'images'} (expected {self.layouts['study']})"
                )
        else:
            base = root if (root / "images.txt").is_file() else root / "CUB_200_2011"
            what = "official CUB_200_2011 layout"
            images = read_table(require_file(base / "images.txt", self.name, what), 2, self.name)
            labels = read_table(require_file(base / "image_class_labels.txt", self.name, what), 2, self.name)
            require_file(base / "classes.txt", self.name, what)
            label_of = {row[0]: int(row[1]) for row in labels}
            missing = [row[0] for row in images if row[0] not in label_of]
            if missing:
                raise ConfigError(
                    f"{self.name}: image ids {missing[:5]} of images.txt have no class in image_class_labels.txt"
                )
            paths = [str(base / "images" / row[1]) for row in images]
            ids = [label_of[row[0]] for row in images]
        train_p, train_y, test_p, test_y = split_by_class_id(paths, np.asarray(ids), N_TRAIN_CLASSES)
        return Listing(train_p, train_y, test_p, test_y)
