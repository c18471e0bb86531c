"""Custom data from a CSV file: ``--dataset csv --source_path <file.csv | folder>``.

Columns (a header row, any order, extra columns ignored):

* ``path``: image path, absolute or relative to the CSV's folder;
* ``label``: class (any string or integer; re-indexed 0..C-1 per split);
* ``split``: ``train``, ``test``, or ``validation``/``val``. When there are no ``test`` rows, the
  ``validation`` rows are the test split (the convention of open-metric-learning's CSVs);
  otherwise they form the validation split (instead of ``--use_tv_split``);
* ``is_query``, ``is_gallery`` (optional, both or neither; ``1/0``, ``true/false``): the
  query/gallery protocol on the test split; without them evaluation is leave-one-out.

``--source_path`` is the CSV file itself, or a folder (``<source_path>/csv`` or ``<source_path>``)
holding ``dataset.csv`` or exactly one ``*.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datasets.base import ImageDataset, Listing
from utilities.errors import ConfigError

TRUE, FALSE = {"1", "true", "yes", "t", "y"}, {"0", "false", "no", "f", "n", ""}


def _bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ConfigError(f"csv: {where}: expected a boolean (1/0, true/false), got {value!r}")


class CSVDataset(ImageDataset):
    """Custom data listed in a CSV: path, label, split [, is_query, is_gallery]."""

    name = "csv"
    layouts = {
        "file": "a CSV with columns path,label,split[,is_query,is_gallery] given as --source_path, "
        "or dataset.csv (or a single *.csv) in <root>",
    }

    def candidates(self) -> list[Path]:
        return [self.source_path] if self.source_path.is_file() else super().candidates()

    def locate(self) -> tuple[Path, str]:
        if self.source_path.is_file():
            return self.source_path, "file"
        for root in super().candidates():
            if root.is_dir():
                found = (
                    [root / "dataset.csv"] if (root / "dataset.csv").is_file() else sorted(root.glob("*.csv"))
                )
                if len(found) == 1:
                    return found[0], "file"
                if len(found) > 1:
                    raise ConfigError(
                        f"csv: several CSV files in {root} ({[f.name for f in found]}); pass one as --source_path"
                    )
        return super().locate()

    def detect(self, root: Path) -> str | None:
        return None

    def read(self, file: Path, layout: str) -> Listing:
        with open(file, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        header = set(rows[0]) if rows else set()
        missing = {"path", "label", "split"} - header
        if missing:
            raise ConfigError(f"csv: {file} lacks the column(s) {sorted(missing)} (needs path,label,split)")
        has_qg = {"is_query", "is_gallery"} & header
        if len(has_qg) == 1:
            raise ConfigError(
                f"csv: {file} has {has_qg.pop()} but not its partner; give both is_query and is_gallery"
            )
        needed = ["path", "label", "split", *sorted(has_qg)]
        for i, r in enumerate(rows):  # DictReader fills a short row's missing fields with None
            short = [c for c in needed if r.get(c) is None]
            if short:
                raise ConfigError(f"csv: {file} row {i + 2} has no value for {short}")
        base = file.parent
        split = np.asarray([r["split"].strip().lower() for r in rows], dtype=object)
        split[split == "val"] = "validation"
        bad = sorted(str(v) for v in set(split) - {"train", "test", "validation"})
        if bad:
            raise ConfigError(f"csv: {file}: unknown split value(s) {bad} (train, test, validation)")
        if not (split == "test").any():
            split[split == "validation"] = "test"
        paths = np.asarray([str(base / r["path"].strip()) for r in rows], dtype=object)
        labels = np.asarray([r["label"].strip() for r in rows])
        if all(s.lstrip("-").isdigit() for s in labels):
            labels = labels.astype(np.int64)  # numeric labels keep their numeric order
        test = split == "test"
        is_query = is_gallery = None
        if has_qg:
            is_query = np.asarray([_bool(r["is_query"], f"{file} row {i + 2}") for i, r in enumerate(rows)])[
                test
            ]
            is_gallery = np.asarray(
                [_bool(r["is_gallery"], f"{file} row {i + 2}") for i, r in enumerate(rows)]
            )[test]
        val = split == "validation"
        return Listing(
            list(paths[split == "train"]),
            labels[split == "train"],
            list(paths[test]),
            labels[test],
            test_is_query=is_query,
            test_is_gallery=is_gallery,
            val_paths=list(paths[val]) if val.any() else None,
            val_labels=labels[val] if val.any() else None,
        )
