"""CARS196 (Krause et al., 2013): 16,185 images of 196 car models.

Zero-shot split (the standard one): official class ids 1-98 train (8,054 images), 99-196 test
(8,131 images); labels re-indexed 0..97 in each split. The official train/test flag of each image
(a classification split) is ignored, as in every DML paper.

Layouts (found automatically under ``<source_path>/cars196`` or ``<source_path>``):

* ``official``: ``car_ims/*.jpg`` and ``cars_annos.mat`` (MATLAB struct ``annotations`` with
  ``relative_im_path`` and ``class``; ``class_names``);
* ``study``: ``images/<class folder>/<image>`` (the reference study's archive). The class id is
  taken from the folder name's leading number if every folder has one; otherwise from the
  official ``class_names`` when a ``cars_annos.mat`` or ``cars_meta.mat`` lies next to
  ``images/`` (names compared case- and punctuation-insensitively); only if neither exists, from
  the sorted folder names, with a warning. (The reference always used the sort order, which is the
  official order only for the author's own archive.)
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import scipy.io

from datasets.base import (
    ImageDataset,
    Listing,
    images_of_classes,
    require_file,
    split_by_class_id,
    subfolders,
)
from utilities.errors import ConfigError

N_TRAIN_CLASSES = 98


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_mat(path: Path, dataset: str) -> dict:
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as err:
        raise ConfigError(f"{dataset}: cannot read {path} ({err})") from None


class Cars196(ImageDataset):
    """CARS196: classes 1-98 train, 99-196 test (official or study layout)."""

    name = "cars196"
    layouts = {
        "official": "<root>/car_ims/*.jpg and <root>/cars_annos.mat",
        "study": "<root>/images/<class folder>/*.jpg",
    }

    def detect(self, root: Path) -> str | None:
        if (root / "cars_annos.mat").is_file() and (root / "car_ims").is_dir():
            return "official"
        if (root / "images").is_dir():
            return "study"
        if (root / "cars_annos.mat").is_file() or (root / "car_ims").is_dir():
            require_file(root / "cars_annos.mat", self.name, "official layout (car_ims/ + cars_annos.mat)")
            raise ConfigError(
                f"{self.name}: missing folder {root / 'car_ims'} (official layout: car_ims/ + cars_annos.mat)"
            )
        return None

    def read(self, root: Path, layout: str) -> Listing:
        if layout == "official":
            mat = load_mat(root / "cars_annos.mat", self.name)
            if "annotations" not in mat:
                raise ConfigError(f"{self.name}: {root / 'cars_annos.mat'} has no 'annotations' struct")
            ann = np.atleast_1d(mat["annotations"])
            try:
                rel = [str(p) for p in np.atleast_1d(ann["relative_im_path"])]
                ids = np.asarray([int(c) for c in np.atleast_1d(ann["class"])])
            except (ValueError, KeyError) as err:
                raise ConfigError(f"{self.name}: cars_annos.mat annotations lack a field ({err})") from None
            paths = [str(root / p) for p in rel]
        else:
            folders = subfolders(root / "images")
            class_ids = self._folder_class_ids(root, [f.name for f in folders])
            paths, ids = images_of_classes(zip(class_ids, folders, strict=True), self.name)
            if not paths:
                raise ConfigError(
                    f"{self.name}: no images under {root / 'images'} (expected {self.layouts['study']})"
                )
        return split_by_class_id(paths, ids, N_TRAIN_CLASSES)

    def _folder_class_ids(self, root: Path, names: list[str]) -> list[int]:
        numbers = [re.match(r"^(\d+)(?:[._ -]|$)", n) for n in names]
        if all(numbers):
            return [int(m.group(1)) for m in numbers]
        for meta in (root / "cars_annos.mat", root / "cars_meta.mat", root / "devkit" / "cars_meta.mat"):
            if meta.is_file():
                official = [str(c) for c in np.atleast_1d(load_mat(meta, self.name).get("class_names", []))]
                lookup = {_norm(c): i + 1 for i, c in enumerate(official)}
                unknown = [n for n in names if _norm(n) not in lookup]
                if unknown:
                    raise ConfigError(
                        f"{self.name}: class folders {unknown[:3]} are not class names in {meta}"
                    )
                return [lookup[_norm(n)] for n in names]
        warnings.warn(
            f"{self.name}: class folders carry no class number and no cars_annos.mat/cars_meta.mat was found "
            f"next to images/; using the sorted folder order as class ids, which is the official split only "
            f"if the folder names sort in official class-id order",
            UserWarning,
            stacklevel=2,
        )
        half = len(names) // 2  # the first half of the sorted folders train (== ids 1-98 for 196 folders)
        return [r + 1 if r < half else N_TRAIN_CLASSES + 1 + r - half for r in range(len(names))]
