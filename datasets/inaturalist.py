"""iNaturalist 2018 (Van Horn et al., "The iNaturalist Species Classification and Detection
Dataset", CVPR 2018) with the metric-learning split of Smooth-AP (Brown et al., "Smooth-AP:
Smoothing the Path Towards Large-Scale Image Retrieval", ECCV 2020).

The DML split covers all 461,939 train + val images of the 2018 competition (8,142 species):
5,690 training classes (325,846 images) and 2,452 unseen test classes (136,093 images), as listed
in ``Inaturalist_train_set1.txt`` / ``Inaturalist_test_set1.txt`` (the ``Inat_dataset_splits``
archive that the Smooth-AP README links to). Each line is one image path relative to the dataset
folder, exactly the ``file_name`` of the competition's ``train2018.json``/``val2018.json``:
``train_val2018/<supercategory>/<category id>/<hash>.jpg`` (e.g.
``train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg``), one path per line, no
other fields.

Labels: the class of an image is its category folder, the iNat category id (unique over the whole
dataset, so the same classes as Smooth-AP's ``<supercategory>/<category>`` keys), re-indexed
0..C-1 per split in category-id order (Smooth-AP numbered its training classes in file order:
the same partition, other label numbers). The supercategory folder (Plantae, Aves, Insecta, ...,
14 in all) is the image's super-class: ``--use_tv_split`` splits the training classes within each
supercategory, as for SOP (Smooth-AP had no validation split). Recall@1, 4, 16, 32 are the ranks
Smooth-AP reports for this dataset (``recall_at``).

Layouts (found automatically under ``<source_path>/inaturalist`` or ``<source_path>``); the listed
paths resolve against the root (an absolute path is used as it is), so the images are normally
under ``<root>/train_val2018/`` as the competition archive unpacks:

* ``official``: ``<root>/Inat_dataset_splits/Inaturalist_{train,test}_set1.txt`` (the archive
  unpacked into the dataset folder, as the Smooth-AP code and pytorch-metric-learning read it);
* ``flat``: ``<root>/Inaturalist_{train,test}_set1.txt`` (the two files moved up to the root).

Deviations and checks: a line that is not ``<...>/<supercategory>/<numeric category id>/<image>``,
or that holds whitespace (a second column), stops the run naming the file and line; so does a
category listed under two supercategories or in both splits (the split is zero-shot). Listed
images are checked like every other plugin's (existence and readability of every file, before
training), not while the 460k lines are read.
"""

from __future__ import annotations

import os
from itertools import repeat
from pathlib import Path

import numpy as np

from datasets.base import ImageDataset, Listing
from utilities.errors import ConfigError

SPLIT_FOLDER = "Inat_dataset_splits"
SPLIT_FILES = {"train": "Inaturalist_train_set1.txt", "test": "Inaturalist_test_set1.txt"}
EXAMPLE = "train_val2018/<supercategory>/<category id>/<image>.jpg"


class INaturalist(ImageDataset):
    """iNaturalist 2018, Smooth-AP's DML split: 5,690 train / 2,452 test species (split files)."""

    name = "inaturalist"
    recall_at = (1, 4, 16, 32)
    layouts = {
        "official": f"<root>/{SPLIT_FOLDER}/{SPLIT_FILES['train']} + {SPLIT_FILES['test']}, "
        f"listing {EXAMPLE} under <root>",
        "flat": f"<root>/{SPLIT_FILES['train']} + {SPLIT_FILES['test']}, listing {EXAMPLE} under <root>",
    }

    @staticmethod
    def _split_folder(root: Path, layout: str) -> Path:
        return root / SPLIT_FOLDER if layout == "official" else root

    def detect(self, root: Path) -> str | None:
        found = {
            layout: sum((self._split_folder(root, layout) / file).is_file() for file in SPLIT_FILES.values())
            for layout in ("official", "flat")
        }
        best = max(found, key=found.__getitem__)  # both files over one; official first on a tie
        return best if found[best] else None

    def read(self, root: Path, layout: str) -> Listing:
        what = f"{layout} layout: {self.layouts[layout]}"
        folder = self._split_folder(root, layout)
        for file in SPLIT_FILES.values():
            if not (folder / file).is_file():
                accepted = "; or ".join(f"{desc} ({name} layout)" for name, desc in self.layouts.items())
                raise ConfigError(f"{self.name}: missing {folder / file}; expected {accepted}")
        parts = {split: self._read_split(folder / file, root, what) for split, file in SPLIT_FILES.items()}
        (train_paths, train_ids, train_supers), (test_paths, test_ids, _) = parts["train"], parts["test"]
        shared = np.intersect1d(train_ids, test_ids)
        if len(shared):
            raise ConfigError(
                f"{self.name}: {len(shared)} categories (e.g. {int(shared[0])}) are listed in both "
                f"{SPLIT_FILES['train']} and {SPLIT_FILES['test']}; the DML split has disjoint classes"
            )
        return Listing(
            train_paths=train_paths,
            train_labels=train_ids,
            test_paths=test_paths,
            test_labels=test_ids,
            train_groups=train_supers,
        )

    def _read_split(self, path: Path, root: Path, what: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(image paths, category ids, supercategory names) of one split file.

        Built for the 325,846 training lines: string slicing per line (no per-line containers,
        so the garbage collector stays idle), the checks made in bulk and on the ~8k distinct
        ``<supercategory>/<category id>`` pairs (a line-by-line search only to name a bad line),
        and no file-system access per line (existence is checked with every plugin's images)."""
        with open(path, encoding="utf-8-sig") as fh:
            rows = [row.strip() for row in fh.read().split("\n")]  # universal newlines: \r\n, \r -> \n
        listed = [row for row in rows if row]
        if not listed:
            raise ConfigError(f"{self.name}: {path} lists no images")
        joined = "\n".join(listed) + "\n"
        well_formed = min(map(str.count, listed, repeat("/"))) >= 2 and not any(
            bad in joined for bad in (" ", "\t", "//", "/\n")
        )
        if well_formed:  # the category folders: [<folders>/]<supercategory>/<category id>, ~8k distinct
            folders = [row[: row.rfind("/")] for row in listed]
            parts = {folder: folder.rsplit("/", 2)[-2:] for folder in set(folders)}
            well_formed = all(sup and cat.isascii() and cat.isdigit() for sup, cat in parts.values())
        if not well_formed:
            number, bad = next((n, row) for n, row in enumerate(rows, 1) if row and _malformed(row))
            raise ConfigError(
                f"{self.name}: {path} line {number}: expected one image path "
                f"{EXAMPLE} (numeric category folder), got {bad!r}"
            )
        first = listed[0]
        prefix = os.path.join(str(root), "")
        top = first.split("/", 1)[0]
        if first[0] != "/" and not os.path.isdir(prefix + top):
            raise ConfigError(
                f"{self.name}: missing folder {prefix + top} (the paths in {path.name} "
                f"start with {top}/, e.g. {first}; {what})"
            )
        super_of: dict[int, str] = {}
        for sup, cat in sorted(parts.values()):  # one supercategory per category id
            if super_of.setdefault(int(cat), sup) != sup:
                raise ConfigError(
                    f"{self.name}: {path}: category {cat} is listed under two supercategories "
                    f"({super_of[int(cat)]}, {sup})"
                )
        id_of = {folder: int(cat) for folder, (_, cat) in parts.items()}
        ids = np.fromiter(map(id_of.__getitem__, folders), dtype=np.int64, count=len(folders))
        supers = np.asarray(list(map({f: sup for f, (sup, _) in parts.items()}.__getitem__, folders)))
        paths = [prefix + row for row in listed]
        if "\n/" in "\n" + joined:  # absolute paths are used as listed
            paths = [row if row[0] == "/" else prefix + row for row in listed]
        return paths, ids, supers


def _malformed(line: str) -> bool:
    """Whether a (stripped, non-empty) line is not ``[<folders>/]<supercategory>/<category
    id>/<image>``: an ASCII-numeric category folder, no empty component, no whitespace."""
    fields = line.rsplit("/", 3)
    return (
        len(fields) < 3
        or not fields[-3]
        or not (fields[-2].isascii() and fields[-2].isdigit())
        or "//" in line
        or line.endswith("/")
        or " " in line
        or "\t" in line
    )
