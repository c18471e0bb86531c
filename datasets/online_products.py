"""Stanford Online Products (Oh Song et al., CVPR 2016): 120,053 images of 22,634 products.

Zero-shot split as published (``Ebay_train.txt``/``Ebay_test.txt``): 11,318 training classes
(59,551 images) and 11,316 test classes (60,502 images); labels re-indexed 0..C-1 in each split
(the reference's validation split started its labels at −1; not here). Rows are ``image_id
class_id super_class_id path`` after a header line. ``--use_tv_split`` splits the classes within
each of the 12 super-classes, as the study does.

Layouts (found automatically under ``<source_path>/online_products`` or ``<source_path>``):

* ``study``: ``Info_Files/Ebay_train.txt`` and ``Ebay_test.txt``, images under ``images/``
  (``images/bicycle_final/<id>_<k>.JPG``);
* ``official``: the ``Stanford_Online_Products`` release (at the root or in
  ``Stanford_Online_Products/``): ``Ebay_train.txt``, ``Ebay_test.txt`` and the
  ``<super>_final/`` folders side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.base import ImageDataset, Listing, read_table, require_file


class OnlineProducts(ImageDataset):
    """Stanford Online Products: Ebay_train.txt / Ebay_test.txt (study or official layout)."""

    name = "online_products"
    recall_at = (1, 10, 100, 1000)
    layouts = {
        "study": "<root>/Info_Files/Ebay_train.txt + Ebay_test.txt and <root>/images/<super>_final/*.JPG",
        "official": "<root>[/Stanford_Online_Products]/Ebay_train.txt + Ebay_test.txt and <super>_final/*.JPG",
    }

    def _bases(self, root: Path) -> dict[str, tuple[Path, Path]]:
        """layout -> (folder of the split files, folder the listed paths are relative to)."""
        return {
            "study": (root / "Info_Files", root / "images"),
            "official": (root, root),
            "official_sub": (root / "Stanford_Online_Products", root / "Stanford_Online_Products"),
        }

    def detect(self, root: Path) -> str | None:
        for layout, (info, _) in self._bases(root).items():
            if (info / "Ebay_train.txt").is_file() or (info / "Ebay_test.txt").is_file():
                return layout
        return None

    def read(self, root: Path, layout: str) -> Listing:
        info, images = self._bases(root)[layout]
        what = f"{layout.replace('_sub', '')} layout: {self.layouts[layout.replace('_sub', '')]}"
        tables = {}
        for split in ("train", "test"):
            path = require_file(info / f"Ebay_{split}.txt", self.name, what)
            tables[split] = read_table(path, 4, self.name, skip=1)
        train, test = tables["train"], tables["test"]
        return Listing(
            train_paths=[str(images / r[3]) for r in train],
            train_labels=np.asarray([int(r[1]) for r in train]),
            test_paths=[str(images / r[3]) for r in test],
            test_labels=np.asarray([int(r[1]) for r in test]),
            train_groups=np.asarray([int(r[2]) for r in train]),
        )
