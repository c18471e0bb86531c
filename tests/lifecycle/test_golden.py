"""Golden numbers: the shared tiny digits run (tests/lifecycle/conftest.py, 3 epochs of margin loss
with the distance miner on smallcnn) must reproduce the per-epoch loss and metrics pinned in
``tests/golden/digits_margin.json``. A change that moves them fails here, on purpose.

When a change is meant to move them (a fixed bug, a new default), update the file as an explicit,
reviewed step and say why in the commit:

    DML_UPDATE_GOLDEN=1 uv run pytest tests/lifecycle/test_golden.py

Tolerances: the loss to 1e-5 relative and MAP@R to 1e-4 (float summation order differs between
CPUs, e.g. AVX2 against AVX-512 kernels); Recall@k to one query of the 896 test images, since one
near-tie resolved differently moves it by 1/896.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.lifecycle._runs import read_rows

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "digits_margin.json"
TOLERANCE = {
    "loss": ("rel", 1e-5),
    "mAP@R": ("abs", 1e-4),
    "e_recall@1": ("abs", 1.01 / 896),
    "e_recall@2": ("abs", 1.01 / 896),
}


def observed(folder: Path) -> dict[str, dict[str, float]]:
    """``{"<epoch>/<split>": {column: value}}`` for the pinned columns of a run's metrics.csv."""
    out = {}
    for row in read_rows(folder):
        values = {k: float(row[k]) for k in TOLERANCE if row.get(k) not in (None, "")}
        if values:
            out[f"{row['epoch']}/{row['split']}"] = values
    return out


def test_the_tiny_digits_run_reproduces_its_golden_numbers(reference):
    got = observed(reference)
    if os.environ.get("DML_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    pinned = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(pinned), "the run logged other epochs/splits than the golden file"
    moved = []
    for key, columns in pinned.items():
        assert sorted(got[key]) == sorted(columns), key
        for column, want in columns.items():
            kind, tol = TOLERANCE[column]
            limit = tol * abs(want) if kind == "rel" else tol
            if abs(got[key][column] - want) > limit:
                moved.append(f"{key} {column}: {got[key][column]!r} (golden {want!r})")
    assert not moved, "golden numbers moved:\n" + "\n".join(moved)
