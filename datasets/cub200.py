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

from pathlib import Path

import numpy as np

from datasets.base import (
    ImageDataset,
    Listing,
    images_of_classes,
    numbered_class_folders,
    read_table,
    require_file,
    split_by_class_id,
)
from utilities.errors import ConfigError

N_TRAIN_CLASSES = 100


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
            paths, ids = images_of_classes(numbered_class_folders(root / "images", self.name), self.name)
            if not paths:
                raise ConfigError(
                    f"{self.name}: no images under {root / 'images'} (expected {self.layouts['study']})"
                )
            return split_by_class_id(paths, ids, N_TRAIN_CLASSES)
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
        ids = np.asarray([label_of[row[0]] for row in images])
        return split_by_class_id(paths, ids, N_TRAIN_CLASSES)
