"""Tiny datasets in every on-disk layout the loaders accept (few classes, few small JPEGs).

Each writer creates ``<root>/<dataset name>/...`` exactly as the real release or the study's
archive lays it out and returns a dict of the expected counts, computed here independently of the
loading code. Class ids straddle the official train/test boundary (e.g. CUB 1, 2 | 101, 102) so
the tests can check that the split comes from the official ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

SIZE = (40, 30)  # width, height: small JPEGs, landscape like most of the real images


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = SIZE) -> None:
    """A smooth random-colour JPEG (class-dependent colour so training has something to learn)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, 3)
    gy, gx = np.mgrid[0:h, 0:w]
    img = (base[None, None, :] + 40 * np.sin(gx[..., None] / 5 + gy[..., None] / 7 + rng.random(3))).clip(
        0, 255
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path, quality=90)


def _class_images(
    folder: Path, class_seed: int, n: int, ext: str = ".jpg", size: tuple[int, int] = SIZE
) -> list[str]:
    names = []
    for k in range(n):
        name = f"img_{class_seed:04d}_{k}{ext}"
        write_jpeg(folder / name, class_seed * 100 + k, size)
        names.append(name)
    return names


# ---- CUB200 -------------------------------------------------------------------------------------

CUB_CLASSES = {
    1: "Black_footed_Albatross",
    2: "Laysan_Albatross",
    3: "Sooty_Albatross",
    101: "White_Pelican",
    102: "Western_Wood_Pewee",
    103: "Sayornis",
}
PER_CLASS = 4


def make_cub_study(root: Path, per_class: int = PER_CLASS, size: tuple[int, int] = SIZE) -> dict:
    base = root / "cub200" / "images"
    for cid, name in CUB_CLASSES.items():
        _class_images(base / f"{cid:03d}.{name}", cid, per_class, size=size)
    (base / "001.Black_footed_Albatross" / "._img_0001_0.jpg").write_bytes(b"\0resource fork")
    (base / "001.Black_footed_Albatross" / ".thumb.jpg").write_bytes(b"\0hidden")
    (base / ".cache").mkdir()
    return _cub_expected(per_class)


def make_cub_official(root: Path, per_class: int = PER_CLASS, nested: bool = True) -> dict:
    base = root / "cub200" / ("CUB_200_2011" if nested else "")
    images, labels = [], []
    image_id = 0
    # listed in an order that is NOT sorted by class, to check nothing relies on file order
    for cid, name in sorted(CUB_CLASSES.items(), key=lambda kv: -kv[0]):
        folder = f"{cid:03d}.{name}"
        for file in _class_images(base / "images" / folder, cid, per_class):
            image_id += 1
            images.append(f"{image_id} {folder}/{file}")
            labels.append(f"{image_id} {cid}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c} {c:03d}.{n}" for c, n in CUB_CLASSES.items()) + "\n")
    return _cub_expected(per_class)


def _zero_shot_expected(class_ids, n_train_classes: int, per_class: int) -> dict:
    """Expected counts when official ids ``1..n_train_classes`` train and the rest test."""
    train = [c for c in class_ids if c <= n_train_classes]
    test = [c for c in class_ids if c > n_train_classes]
    return {
        "train_classes": len(train),
        "test_classes": len(test),
        "train_images": len(train) * per_class,
        "test_images": len(test) * per_class,
    }


def _cub_expected(per_class: int) -> dict:
    return _zero_shot_expected(CUB_CLASSES, 100, per_class)


# ---- CARS196 ------------------------------------------------------------------------------------

# Official ids: alphabetical order of these names differs from the id order on purpose.
CARS_CLASSES = {
    1: "Zeta Roadster 2012",
    2: "Acura RL Sedan 2012",
    3: "Mazda Tribute SUV 2011",
    99: "BMW M3 Coupe 2012",
    100: "Audi TT RS Coupe 2012",
    101: "Bugatti Veyron 16.4 Coupe 2009",
}


def _cars_names_array() -> np.ndarray:
    names = np.empty(196, dtype=object)
    for i in range(196):
        names[i] = CARS_CLASSES.get(i + 1, f"Unused Car {i + 1}")
    return names


def make_cars_official(root: Path, per_class: int = PER_CLASS) -> dict:
    base = root / "cars196"
    records = []
    n = 0
    for cid in CARS_CLASSES:
        for k in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_jpeg(base / rel, cid * 100 + k)
            records.append((rel, 1, 1, 30, 20, cid, k % 2))
    dtype = [
        ("relative_im_path", "O"),
        ("bbox_x1", "O"),
        ("bbox_y1", "O"),
        ("bbox_x2", "O"),
        ("bbox_y2", "O"),
        ("class", "O"),
        ("test", "O"),
    ]
    annotations = np.array(records, dtype=dtype)
    scipy.io.savemat(
        str(base / "cars_annos.mat"), {"annotations": annotations, "class_names": _cars_names_array()}
    )
    return _cars_expected(per_class)


def make_cars_study(root: Path, per_class: int = PER_CLASS, with_meta: bool = True) -> dict:
    """``images/<class name>/``; with ``with_meta`` a ``cars_meta.mat`` gives the official ids."""
    base = root / "cars196"
    for cid, name in CARS_CLASSES.items():
        _class_images(base / "images" / name, cid, per_class)
    if with_meta:
        scipy.io.savemat(str(base / "cars_meta.mat"), {"class_names": _cars_names_array()})
    return _cars_expected(per_class)


def _cars_expected(per_class: int) -> dict:
    train_names = {name for c, name in CARS_CLASSES.items() if c <= 98}
    return {**_zero_shot_expected(CARS_CLASSES, 98, per_class), "train_names": train_names}


# CARS196 as it can be downloaded since the official links died (2023): the devkit release in
# torchvision's / Kaggle's layout, and Kaggle's class-name folders. Each class's images are spread
# over both official halves (as in the real data), and both halves number their files from
# 00001.jpg, so the same file name occurs in cars_train/ and cars_test/.

CARS_SLASH = (174, "Ram C/V Cargo Van Minivan 2012")  # a real class whose folder name reads "Ram C-V ..."


def _cars_halves(per_class: int, extra: dict[int, str] | None = None) -> dict[str, list[tuple[int, str]]]:
    """(class id, file name) per official half: the first half of each class's images in train,
    the rest in test; files numbered per half in an order that is not sorted by class."""
    classes = {**CARS_CLASSES, **(extra or {})}
    halves: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for cid in sorted(classes, key=lambda c: (c * 37) % 101):  # interleaved, not by id
        for k in range(per_class):
            half = "train" if k < (per_class + 1) // 2 else "test"
            halves[half].append((cid, f"{len(halves[half]) + 1:05d}.jpg"))
    return halves


def make_cars_torchvision(
    root: Path,
    per_class: int = PER_CLASS,
    wrapper: bool = False,
    nested: bool = False,
    test_annos: str = "root",
    suffix: str = "",
) -> dict:
    """``cars196/[stanford_cars/]cars_{train,test}/[cars_{train,test}/]NNNNN.jpg``,
    ``devkit/{cars_train_annos,cars_test_annos,cars_meta}.mat`` and
    ``cars_test_annos_withlabels<suffix>.mat`` at the root (``test_annos="root"``, torchvision) or
    in ``devkit/`` (``"devkit"``, some Kaggle mirrors); ``test_annos=None`` leaves it out."""
    base = root / "cars196" / ("stanford_cars" if wrapper else "")
    devkit = base / "devkit"
    devkit.mkdir(parents=True, exist_ok=True)
    fields = [
        ("bbox_x1", "O"),
        ("bbox_y1", "O"),
        ("bbox_x2", "O"),
        ("bbox_y2", "O"),
        ("class", "O"),
        ("fname", "O"),
    ]
    expected_paths: dict[str, set[str]] = {"train": set(), "test": set()}
    class_of: dict[str, int] = {}
    records: dict[str, list[tuple]] = {}
    for half, items in _cars_halves(per_class).items():
        folder = base / f"cars_{half}"
        if nested:
            folder = folder / f"cars_{half}"
        records[half] = []
        for n, (cid, fname) in enumerate(items):
            write_jpeg(folder / fname, cid * 100 + n + (50 if half == "test" else 0))
            records[half].append(
                (np.uint16(1), np.uint16(2), np.uint16(30), np.uint16(20), np.uint8(cid), fname)
            )
            expected_paths["train" if cid <= 98 else "test"].add(str(folder / fname))
            class_of[str(folder / fname)] = cid
    scipy.io.savemat(
        str(devkit / "cars_train_annos.mat"), {"annotations": np.array(records["train"], dtype=fields)}
    )
    unlabeled = [r[:4] + r[5:] for r in records["test"]]  # the devkit's test file has no class field
    scipy.io.savemat(
        str(devkit / "cars_test_annos.mat"),
        {"annotations": np.array(unlabeled, dtype=[f for f in fields if f[0] != "class"])},
    )
    if test_annos is not None:
        where = base if test_annos == "root" else devkit
        scipy.io.savemat(
            str(where / f"cars_test_annos_withlabels{suffix}.mat"),
            {"annotations": np.array(records["test"], dtype=fields)},
        )
    scipy.io.savemat(str(devkit / "cars_meta.mat"), {"class_names": _cars_names_array()})
    return {
        **_cars_expected(per_class),
        "base": base,
        "train_paths": expected_paths["train"],
        "test_paths": expected_paths["test"],
        "class_of": class_of,
    }


def make_cars_class_folders(
    root: Path,
    per_class: int = PER_CLASS,
    kaggle: bool = True,
    names: str | None = "csv",
    numbered: bool = False,
) -> dict:
    """Class-name folders per official half: ``cars196/car_data/car_data/{train,test}/<class name>/``
    with ``cars196/names.csv`` (Kaggle "stanford-car-dataset-by-classes-folder", ``kaggle=True``) or
    ``cars196/{train,test}/<class name>/``. ``names``: ``"csv"`` (names.csv next to car_data/),
    ``"meta"`` (devkit/cars_meta.mat) or None; ``numbered``: folders ``NNNN <class name>``.
    Includes the class "Ram C/V Cargo Van Minivan 2012" (id 174), whose folder is "Ram C-V ...".
    """
    top = root / "cars196"
    base = top / "car_data" / "car_data" if kaggle else top
    official = _cars_names_array()
    official[CARS_SLASH[0] - 1] = CARS_SLASH[1]
    classes = {**CARS_CLASSES, CARS_SLASH[0]: CARS_SLASH[1]}
    folder_of = {
        cid: (f"{cid:04d} " if numbered else "") + name.replace("/", "-") for cid, name in classes.items()
    }
    expected_paths: dict[str, set[str]] = {"train": set(), "test": set()}
    class_of: dict[str, int] = {}
    for half, items in _cars_halves(per_class, {CARS_SLASH[0]: CARS_SLASH[1]}).items():
        for n, (cid, fname) in enumerate(items):
            path = base / half / folder_of[cid] / fname
            write_jpeg(path, cid * 100 + n + (50 if half == "test" else 0))
            expected_paths["train" if cid <= 98 else "test"].add(str(path))
            class_of[str(path)] = cid
    if names == "csv":
        (top / "names.csv").write_text("\n".join(official) + "\n")
    elif names == "meta":
        (top / "devkit").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(top / "devkit" / "cars_meta.mat"), {"class_names": official})
    return {
        **_zero_shot_expected(classes, 98, per_class),
        "train_folders": {folder_of[c] for c in classes if c <= 98},
        "test_folders": {folder_of[c] for c in classes if c > 98},
        "train_paths": expected_paths["train"],
        "test_paths": expected_paths["test"],
        "class_of": class_of,
    }


# ---- Stanford Online Products ---------------------------------------------------------------------

SOP_SUPER = ["bicycle", "chair"]


def make_sop(root: Path, layout: str = "study", per_class: int = 3) -> dict:
    """SOP with 8 classes (ids 1-4 train, 5-8 test), 2 super-classes; ``study`` or ``official``."""
    base = root / "online_products"
    if layout == "study":
        info, images = base / "Info_Files", base / "images"
    else:
        info = images = base / "Stanford_Online_Products"
    info.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    image_id = 0
    for cid in range(1, 9):
        super_id = 1 + (cid - 1) % 2  # super-classes interleave, like the real file
        split = "train" if cid <= 4 else "test"
        for k in range(per_class):
            image_id += 1
            rel = f"{SOP_SUPER[super_id - 1]}_final/{111000 + cid}_{k}.JPG"
            write_jpeg(images / rel, cid * 100 + k)
            rows[split].append(f"{image_id} {cid} {super_id} {rel}")
    for split, lines in rows.items():
        (info / f"Ebay_{split}.txt").write_text(
            "image_id class_id super_class_id path\n" + "\n".join(lines) + "\n"
        )
    return {
        "train_classes": 4,
        "test_classes": 4,
        "train_images": 4 * per_class,
        "test_images": 4 * per_class,
    }


# ---- In-Shop ----------------------------------------------------------------------------------------


def make_inshop(root: Path, layout: str = "study") -> dict:
    """4 train items × 3 images; 3 test items, each 1 query + 2 gallery images."""
    base = root / "inshop"
    lines = []
    for item in range(1, 5):
        for k in range(3):
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{k:02d}_1_front.jpg"
            write_jpeg(base / rel, item * 100 + k)
            lines.append(f"{rel} id_{item:08d} train")
    for item in range(5, 8):
        for k, status in enumerate(("query", "gallery", "gallery")):
            rel = f"img/MEN/Denim/id_{item:08d}/{k:02d}_{k}_side.jpg"
            write_jpeg(base / rel, item * 100 + k)
            lines.append(f"{rel} id_{item:08d} {status}")
    partition = {"study": base / "Eval", "official": base, "official_anno": base / "Anno"}[layout]
    partition.mkdir(parents=True, exist_ok=True)
    (partition / "list_eval_partition.txt").write_text(
        f"{len(lines)}\nimage_name item_id evaluation_status\n" + "\n".join(lines) + "\n"
    )
    return {"train_classes": 4, "train_images": 12, "test_classes": 3, "queries": 3, "gallery": 6}


# ---- custom data -------------------------------------------------------------------------------------


def make_folder(root: Path, layout: str = "split") -> dict:
    base = root / "folder"
    if layout == "split":
        for split, classes in (("train", ["ant", "bee", "cat"]), ("test", ["dog", "eel"])):
            for i, c in enumerate(classes):
                _class_images(
                    base / split / c,
                    (7 if split == "test" else 0) + i,
                    3,
                    ext=".png" if c == "bee" else ".jpg",
                )
        return {"train_classes": 3, "test_classes": 2, "train_images": 9, "test_images": 6}
    for i, c in enumerate(["ant", "bee", "cat", "dog"]):
        _class_images(base / c, i, 3)
    return {"train_classes": 2, "test_classes": 2, "train_images": 6, "test_images": 6}


def make_csv(root: Path, query_gallery: bool = True, name: str = "dataset.csv") -> dict:
    base = root / "csv"
    rows = ["path,label,split" + (",is_query,is_gallery" if query_gallery else "")]
    for label in range(6):
        split = "train" if label < 3 else "test"
        for k in range(3):
            rel = f"imgs/{label}_{k}.jpg"
            write_jpeg(base / rel, label * 100 + k)
            extra = ""
            if query_gallery:
                extra = ",1,0" if k == 0 else ",0,1"
            rows.append(f"{rel},{10 * label},{split}{extra}")
    base.mkdir(parents=True, exist_ok=True)
    (base / name).write_text("\n".join(rows) + "\n")
    return {
        "train_classes": 3,
        "test_classes": 3,
        "train_images": 9,
        "test_images": 9,
        "queries": 3 if query_gallery else None,
    }


# ---- iNaturalist 2018 (Smooth-AP's DML split) -------------------------------------------------------

# (supercategory, category id, images) as iNat 2018 lays them out: train_val2018/<super>/<id>/<hash>.jpg.
# Train and test categories interleave in id order and share supercategories (as in the real
# split); Insecta has one training class only, Fungi only test classes.
INAT_TRAIN = [
    ("Plantae", 7477, 3),
    ("Plantae", 7390, 2),
    ("Plantae", 6500, 3),
    ("Aves", 2761, 3),
    ("Aves", 3001, 2),
    ("Insecta", 1012, 2),
]
INAT_TEST = [("Plantae", 7100, 2), ("Aves", 2900, 3), ("Fungi", 5000, 2)]


def make_inaturalist(root: Path, layout: str = "official") -> dict:
    """``inaturalist/train_val2018/<super>/<id>/<32 hex>.jpg`` and the two Smooth-AP split files,
    in ``inaturalist/Inat_dataset_splits/`` (``official``) or at ``inaturalist/`` (``flat``): one
    relative path per line, the classes' lines interleaved (the files are not sorted by class)."""
    base = root / "inaturalist"
    lines: dict[str, list[str]] = {}
    class_of: dict[str, int] = {}
    super_of: dict[str, str] = {}
    for split, classes in (("train", INAT_TRAIN), ("test", INAT_TEST)):
        rows = []
        for sup, cid, n in classes:
            for k in range(n):
                name = f"{pow(cid * 1000 + k + 2, 65537, 2**128 - 159):032x}.jpg"  # 32 hex, like md5
                rel = f"train_val2018/{sup}/{cid}/{name}"
                write_jpeg(base / rel, cid * 10 + k)
                rows.append((k, rel))
                class_of[str(base / rel)] = cid
                super_of[str(base / rel)] = sup
        lines[split] = [rel for _, rel in sorted(rows, key=lambda r: r[0])]  # k-th image of each class
    folder = base / "Inat_dataset_splits" if layout == "official" else base
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (folder / f"Inaturalist_{split}_set1.txt").write_text("\n".join(rows) + "\n")
    return {
        "train_classes": 6,
        "test_classes": 3,
        "train_images": 15,  # 3 + 2 + 3 + 3 + 2 + 2
        "test_images": 7,  # 2 + 3 + 2
        "train_ids": {7477, 7390, 6500, 2761, 3001, 1012},
        "test_ids": {7100, 2900, 5000},
        "class_of": class_of,
        "super_of": super_of,
        "split_folder": folder,
        "base": base,
    }
