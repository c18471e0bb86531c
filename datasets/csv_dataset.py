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
holding ``dataset.csv`` or exactly one ``*.csv``. The file is UTF-8, with or without a byte-order
mark (Excel's "CSV UTF-8"); an empty path, label or split is refused naming the row (its line).
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

    @staticmethod
    def _rows(file: Path) -> tuple[list[str], list[int], list[dict[str, str]]]:
        """(header names, line number of each data row, the rows). A UTF-8 byte-order mark
        (Excel's "CSV UTF-8") is dropped and header names are stripped of spaces; a row's number
        is its line in the file (blank lines, which the reader skips, still count)."""
        header: list[str] = []
        lines: list[int] = []
        rows: list[dict[str, str]] = []
        line = 0
        try:
            with open(file, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = [name.strip() for name in reader.fieldnames or []]
                reader.fieldnames = header
                for row in reader:
                    line = reader.line_num
                    lines.append(line)
                    rows.append(row)
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"csv: {file} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                f"save it as CSV UTF-8"
            ) from None
        except csv.Error as err:
            raise ConfigError(f"csv: {file} after line {line}: {err}") from None
        return header, lines, rows

    def read(self, file: Path, layout: str) -> Listing:
        names, lines, rows = self._rows(file)
        header = set(names)
        missing = {"path", "label", "split"} - header
        if missing:
            hint = ""
            if len(names) == 1 and any(sep in names[0] for sep in ";\t"):
                hint = "; the header is one field: save the file comma-separated"
            raise ConfigError(
                f"csv: {file} lacks the column(s) {sorted(missing)} (needs path,label,split){hint}"
            )
        if not rows:
            raise ConfigError(f"csv: {file} lists no images (only a header)")
        has_qg = {"is_query", "is_gallery"} & header
        if len(has_qg) == 1:
            raise ConfigError(
                f"csv: {file} has {has_qg.pop()} but not its partner; give both is_query and is_gallery"
            )
        needed = ["path", "label", "split", *sorted(has_qg)]
        for line, r in zip(lines, rows, strict=True):  # DictReader fills a short row's fields with None
            short = [c for c in needed if r.get(c) is None]
            if short:
                raise ConfigError(f"csv: {file} row {line} has no value for {short}")
            blank = [c for c in ("path", "label", "split") if not r[c].strip()]
            if blank:
                raise ConfigError(
                    f"csv: {file} row {line}: empty {' and '.join(blank)}; every image needs a path, "
                    f"a label and a split"
                )
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
            where = [f"{file} row {line}" for line in lines]
            is_query = np.asarray([_bool(r["is_query"], w) for w, r in zip(where, rows, strict=True)])[test]
            is_gallery = np.asarray([_bool(r["is_gallery"], w) for w, r in zip(where, rows, strict=True)])[
                test
            ]
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
