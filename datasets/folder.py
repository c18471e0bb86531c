"""Custom data as class folders: ``--dataset folder --source_path <root>``.

Layouts (under ``<source_path>/folder`` or ``<source_path>`` itself):

* ``split``: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``, optionally
  ``<root>/val/<class>/*`` (then used as the validation split instead of ``--use_tv_split``);
* ``flat``: ``<root>/<class>/*``; the first half of the classes (sorted by folder name) train,
  the second half test, the standard zero-shot protocol.

Class folders are the labels (re-indexed 0..C-1 per split); files with an image extension
(``.jpg .jpeg .png .bmp .webp``, any case) are used, hidden files skipped; a class folder without
images is refused (naming it), as in every folder-per-class layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.base import ImageDataset, Listing, images_of_classes, list_images, subfolders
from utilities.errors import ConfigError


def read_class_folders(root: Path) -> tuple[list[str], np.ndarray]:
    """(image paths, class folder name per image) for ``<root>/<class>/*``."""
    return images_of_classes(((folder.name, folder) for folder in subfolders(root)), "folder")


class Folder(ImageDataset):
    """One sub-folder per class (train/ + test/ [+ val/], or flat: first half of classes train)."""

    name = "folder"
    layouts = {
        "split": "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg [and <root>/val/<class>/]",
        "flat": "<root>/<class>/*.jpg (first half of the sorted classes train, second half test)",
    }

    def detect(self, root: Path) -> str | None:
        if (root / "train").is_dir() and (root / "test").is_dir():
            return "split"
        if any(list_images(p) for p in subfolders(root)):
            return "flat"
        return None

    def read(self, root: Path, layout: str) -> Listing:
        if layout == "split":
            train_p, train_y = read_class_folders(root / "train")
            test_p, test_y = read_class_folders(root / "test")
            val_p, val_y = read_class_folders(root / "val") if (root / "val").is_dir() else (None, None)
            return Listing(train_p, train_y, test_p, test_y, val_paths=val_p, val_labels=val_y)
        paths, labels = read_class_folders(root)
        classes = np.unique(labels)
        if len(classes) < 2:
            raise ConfigError(
                f"folder: {root} has {len(classes)} class folder(s); need at least 2 for a train/test split"
            )
        train = np.isin(labels, classes[: len(classes) // 2])
        p = np.asarray(paths, dtype=object)
        return Listing(list(p[train]), labels[train], list(p[~train]), labels[~train])
