"""CARS196 (Krause et al., 2013): 16,185 images of 196 car models.

Zero-shot split (the standard one): official class ids 1-98 train (8,054 images), 99-196 test
(8,131 images); labels re-indexed 0..97 in each split. The official train/test flag of each image
(a classification split) is ignored, as in every DML paper: the split is taken over the union of
both halves, whatever the layout.

Layouts (found automatically under ``<source_path>/cars196`` or ``<source_path>``):

* ``official``: ``car_ims/*.jpg`` and ``cars_annos.mat`` (MATLAB struct ``annotations`` with
  ``relative_im_path`` and ``class``; ``class_names``). Its links are dead since 2023.
* ``study``: ``images/<class folder>/<image>`` (the reference study's archive). The class id is
  taken from the folder name's leading number if every folder has one; otherwise from the
  official class names when a ``names.csv``, ``cars_annos.mat`` or ``[devkit/]cars_meta.mat``
  lies next to ``images/`` (names compared case- and punctuation-insensitively); only if none does, from
  the sorted folder names, with a warning. (The reference always used the sort order, which is the
  official order only for the author's own archive.)
* ``torchvision``: the devkit release as torchvision's ``StanfordCars`` and the Kaggle mirrors
  lay it out, optionally inside ``stanford_cars/``: ``cars_train/*.jpg`` and ``cars_test/*.jpg``
  (a Kaggle-style doubled folder ``cars_train/cars_train/`` is descended into),
  ``devkit/cars_train_annos.mat`` (struct ``annotations``: ``bbox_x1``, ``bbox_y1``,
  ``bbox_x2``, ``bbox_y2``, ``class``, ``fname``) and ``cars_test_annos_withlabels.mat`` (same
  fields; torchvision wants it next to ``devkit/``, some mirrors put it inside, or append a
  download suffix such as `` (1)``; all are accepted). ``devkit/cars_meta.mat`` is not needed: the
  ``class`` field holds the official id 1..196. ``fname`` is relative to its half's folder (both
  halves number their files from ``00001.jpg``).
* ``class_folders``: ``train/<class name>/*.jpg`` and ``test/<class name>/*.jpg``, optionally
  inside ``car_data/``, ``car_data/car_data/`` or ``stanford_cars/`` (the Kaggle
  "stanford-car-dataset-by-classes-folder" download is ``names.csv`` +
  ``car_data/car_data/{train,test}/<class name>/``). A class's images are those of its folder in
  both halves. Class ids, in this order of preference: a leading number on
  every folder name (``0001 AM General Hummer SUV 2000``); the line number in ``names.csv`` (one
  official class name per line, official order), or the official ``class_names`` of a
  ``cars_meta.mat`` / ``devkit/cars_meta.mat`` / ``cars_annos.mat`` in the data folder or any
  folder above it up to the dataset root (names compared case- and punctuation-insensitively, so
  the folder ``Ram C-V Cargo Van Minivan 2012`` is the class ``Ram C/V Cargo Van Minivan 2012``);
  otherwise the sorted folder names.

On the sort order: the official ids (``cars_meta.mat``) are **not** the alphabetical order of the
class names (e.g. id 2 is ``Acura RL Sedan 2012`` but ``Acura Integra Type R 2001`` is id 6).
The makes, however, are in ASCII order and the 98/99 boundary falls between two makes (98 ``Eagle
Talon Hatchback 1998``, 99 ``FIAT 500 Abarth 2012``), so for the 196 official names the first 98
in sorted order are exactly ids 1-98: the sorted fallback of ``class_folders`` yields the official
split (only the label numbering inside each split differs, which matters to ``--use_tv_split``'s
class split alone). It therefore warns only when the folders are not 196 classes.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np

from datasets.base import (
    ImageDataset,
    Listing,
    images_of_classes,
    list_images,
    require_file,
    split_by_class_id,
    subfolders,
)
from utilities.errors import ConfigError

N_TRAIN_CLASSES = 98
N_CLASSES = 196

TRAIN_ANNOS = "cars_train_annos.mat"
TEST_ANNOS = "cars_test_annos_withlabels.mat"
TORCHVISION_WRAPPERS = ("stanford_cars",)  # torchvision's root/stanford_cars/...
CLASS_FOLDER_WRAPPERS = ("car_data", "stanford_cars")  # Kaggle's car_data/car_data/...


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_mat(path: Path, dataset: str) -> dict:
    import scipy.io  # lazy: a second of CPU that --help, configuration errors and other datasets skip

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as err:
        raise ConfigError(f"{dataset}: cannot read {path} ({err})") from None


def read_annotations(path: Path, fields: tuple[str, str], dataset: str) -> tuple[list[str], np.ndarray]:
    """(file names, class ids) from the ``annotations`` struct of a CARS ``.mat`` file; ``fields``
    names the path field and the class field."""
    mat = load_mat(path, dataset)
    if "annotations" not in mat:
        raise ConfigError(f"{dataset}: {path} has no 'annotations' struct")
    ann = np.atleast_1d(mat["annotations"])
    path_field, class_field = fields
    names = ann.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise ConfigError(
            f"{dataset}: the annotations in {path} have no {' or '.join(repr(f) for f in missing)} field "
            f"(fields: {', '.join(names) or 'none'})"
        )
    try:
        files = [str(p) for p in np.atleast_1d(ann[path_field])]
        ids = np.asarray([int(c) for c in np.atleast_1d(ann[class_field])], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{dataset}: unreadable {class_field!r} in {path} ({err})") from None
    bad = ids[(ids < 1) | (ids > N_CLASSES)]
    if len(bad):
        raise ConfigError(f"{dataset}: {path} has class ids outside 1..{N_CLASSES} (e.g. {int(bad[0])})")
    return files, ids


def unwrap(folder: Path) -> Path:
    """Descend a doubled folder (Kaggle zips: ``cars_train/cars_train/``, ``car_data/car_data/``)
    as long as the outer one holds no images itself."""
    while (folder / folder.name).is_dir() and not list_images(folder):
        folder = folder / folder.name
    return folder


def _below(root: Path, wrappers: tuple[str, ...]) -> list[Path]:
    """``root`` and the wrapper folders inside it (each unwrapped)."""
    return [root] + [unwrap(root / w) for w in wrappers if (root / w).is_dir()]


def _folders_up(folder: Path, root: Path) -> list[Path]:
    """``folder`` and its parents up to ``root`` (inclusive)."""
    out = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


class Cars196(ImageDataset):
    """CARS196: classes 1-98 train, 99-196 test (official, study, torchvision or class-folder layout)."""

    name = "cars196"
    layouts = {
        "official": "<root>/car_ims/*.jpg and <root>/cars_annos.mat",
        "study": "<root>/images/<class folder>/*.jpg",
        "torchvision": (
            f"<root>/[stanford_cars/]cars_train/, cars_test/, devkit/{TRAIN_ANNOS} and [devkit/]{TEST_ANNOS}"
        ),
        "class_folders": "<root>/[car_data/car_data/]train/<class name>/*.jpg and test/<class name>/*.jpg",
    }

    # ---- detection ---------------------------------------------------------------------------

    def detect(self, root: Path) -> str | None:
        if (root / "cars_annos.mat").is_file() and (root / "car_ims").is_dir():
            return "official"
        if (root / "images").is_dir():
            return "study"
        if self._torchvision_base(root) is not None:
            return "torchvision"
        if self._class_folders_base(root) is not None:
            return "class_folders"
        if (root / "cars_annos.mat").is_file() or (root / "car_ims").is_dir():
            require_file(root / "cars_annos.mat", self.name, "official layout (car_ims/ + cars_annos.mat)")
            raise ConfigError(
                f"{self.name}: missing folder {root / 'car_ims'} (official layout: car_ims/ + cars_annos.mat)"
            )
        return None

    @staticmethod
    def _torchvision_base(root: Path) -> Path | None:
        """The folder holding ``cars_train/`` or ``cars_test/`` or ``devkit/cars_train_annos.mat``."""
        for base in _below(root, TORCHVISION_WRAPPERS):
            if (
                (base / "cars_train").is_dir()
                or (base / "cars_test").is_dir()
                or (base / "devkit" / TRAIN_ANNOS).is_file()
            ):
                return base
        return None

    @staticmethod
    def _class_folders_base(root: Path) -> Path | None:
        """The folder holding both ``train/`` and ``test/``."""
        for base in _below(root, CLASS_FOLDER_WRAPPERS):
            if (base / "train").is_dir() and (base / "test").is_dir():
                return base
        return None

    # ---- reading -------------------------------------------------------------------------------

    def read(self, root: Path, layout: str) -> Listing:
        if layout == "official":
            rel, ids = read_annotations(root / "cars_annos.mat", ("relative_im_path", "class"), self.name)
            paths = [str(root / p) for p in rel]
        elif layout == "study":
            folders = subfolders(root / "images")
            class_ids = self._folder_class_ids([root], [f.name for f in folders], "study")
            paths, ids = images_of_classes(zip(class_ids, folders, strict=True), self.name)
            if not paths:
                raise ConfigError(
                    f"{self.name}: no images under {root / 'images'} (expected {self.layouts['study']})"
                )
        elif layout == "torchvision":
            paths, ids = self._read_torchvision(root)
        else:
            paths, ids = self._read_class_folders(root, layout)
        return split_by_class_id(paths, ids, N_TRAIN_CLASSES)

    def _read_torchvision(self, root: Path) -> tuple[list[str], np.ndarray]:
        base = self._torchvision_base(root)
        assert base is not None
        expected = f"expected for the torchvision layout: {self.layouts['torchvision']}"
        for half in ("cars_train", "cars_test"):
            if not (base / half).is_dir():
                raise ConfigError(
                    f"{self.name}: missing folder {base / half} ({expected}; the class split needs both halves)"
                )
        train_annos = self._find_annotations(base, TRAIN_ANNOS, expected, devkit_first=True)
        test_annos = self._find_annotations(base, TEST_ANNOS, expected, devkit_first=False)
        paths: list[str] = []
        ids: list[np.ndarray] = []
        for half, annos in (("cars_train", train_annos), ("cars_test", test_annos)):
            folder = unwrap(base / half)
            files, half_ids = read_annotations(annos, ("fname", "class"), self.name)
            paths += [str(folder / f) for f in files]
            ids.append(half_ids)
        return paths, np.concatenate(ids)

    def _find_annotations(self, base: Path, file: str, expected: str, devkit_first: bool) -> Path:
        """``file`` in ``devkit/`` or ``base`` (also with a download suffix: ``name (1).mat``)."""
        folders = [base / "devkit", base] if devkit_first else [base, base / "devkit"]
        for folder in folders:
            if (folder / file).is_file():
                return folder / file
        stem = Path(file).stem
        for folder in folders:
            if folder.is_dir():
                variants = sorted(
                    p for p in folder.glob(f"{stem}*.mat") if p.is_file() and not p.name.startswith(".")
                )
                if variants:
                    return variants[0]
        hint = ""
        if file == TEST_ANNOS and any((f / "cars_test_annos.mat").is_file() for f in folders):
            hint = "; cars_test_annos.mat has no class labels"
        raise ConfigError(
            f"{self.name}: missing {folders[0] / file} (nor in {folders[1]}){hint} ({expected})"
        )

    def _read_class_folders(self, root: Path, layout: str) -> tuple[list[str], np.ndarray]:
        base = self._class_folders_base(root)
        assert base is not None
        halves = {half: subfolders(base / half) for half in ("train", "test")}
        for half, folders in halves.items():
            if not folders:
                raise ConfigError(
                    f"{self.name}: no class folders in {base / half} "
                    f"(class_folders layout: {self.layouts['class_folders']})"
                )
        names = sorted({f.name for folders in halves.values() for f in folders})
        class_id = dict(
            zip(names, self._folder_class_ids(_folders_up(base, root), names, layout), strict=True)
        )
        pairs = [(class_id[f.name], f) for folders in halves.values() for f in folders]
        paths, ids = images_of_classes(pairs, self.name)
        return paths, np.asarray(ids, dtype=np.int64)

    # ---- class ids of named folders ------------------------------------------------------------

    def _folder_class_ids(self, places: list[Path], names: list[str], layout: str) -> list[int]:
        """Official class ids of the class folders ``names``: a leading number, else the official
        class names found in ``places`` (``names.csv``, ``cars_annos.mat``, ``cars_meta.mat``,
        ``devkit/cars_meta.mat``), else the sorted order (see the module docstring)."""
        numbers = [re.match(r"^(\d+)(?:[._ -]|$)", n) for n in names]
        if all(numbers):
            return [int(m.group(1)) for m in numbers]
        for place in places:
            for source in (
                place / "names.csv",
                place / "cars_annos.mat",
                place / "cars_meta.mat",
                place / "devkit" / "cars_meta.mat",
            ):
                if source.is_file():
                    official = self._official_names(source)
                    lookup = {_norm(c): i + 1 for i, c in enumerate(official)}
                    unknown = [n for n in names if _norm(n) not in lookup]
                    if unknown:
                        raise ConfigError(
                            f"{self.name}: class folders {unknown[:3]} are not class names in {source}"
                        )
                    return [lookup[_norm(n)] for n in names]
        if layout == "study":
            warnings.warn(
                f"{self.name}: class folders carry no class number and no names.csv/cars_annos.mat/"
                f"cars_meta.mat was found next to images/; using the sorted folder order as class ids, "
                f"which is the official split only if the folder names sort in official class-id order",
                UserWarning,
                stacklevel=4,
            )
        elif len(names) != N_CLASSES:
            warnings.warn(
                f"{self.name}: class folders carry no class number and no names.csv/cars_meta.mat was found "
                f"in {places[0]} or above; the first half of the {len(names)} folders in sorted order train "
                f"(the official split only for the {N_CLASSES} official class names)",
                UserWarning,
                stacklevel=4,
            )
        half = len(names) // 2  # the first half of the sorted folders train (== ids 1-98 for 196 folders)
        rank = {n: r for r, n in enumerate(sorted(names))}
        return [rank[n] + 1 if rank[n] < half else N_TRAIN_CLASSES + 1 + rank[n] - half for n in names]

    def _official_names(self, source: Path) -> list[str]:
        if source.suffix == ".csv":
            try:
                with open(source, encoding="utf-8-sig", newline="") as fh:
                    rows = [row for row in csv.reader(fh) if row and row[0].strip()]
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"{self.name}: cannot read {source} ({err})") from None
            names = [row[0].strip() for row in rows]
        else:
            names = [str(c) for c in np.atleast_1d(load_mat(source, self.name).get("class_names", []))]
        if not names:
            raise ConfigError(f"{self.name}: {source} lists no class names")
        return names
