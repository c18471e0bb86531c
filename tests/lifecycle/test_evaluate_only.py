"""--evaluate_only --checkpoint: the metrics of a checkpoint, without training, equal those the
training run logged at that epoch (wall-clock columns excluded)."""

from __future__ import annotations

import csv
import json

import pytest

import main
from tests.lifecycle._runs import read_summary, tiny_args
from utilities.errors import ConfigError


def test_evaluate_only_reproduces_the_selected_epoch(tmp_path):
    main.main(tiny_args(tmp_path, "train", epochs=2))
    run = tmp_path / "digits" / "train"
    trained = read_summary(run)

    out = tmp_path / "evaluated"
    summary = main.main(
        ["--evaluate_only", "--checkpoint", str(run / "checkpoint_best.pt"), "--save_path", str(out)]
    )
    folder = out / "digits" / "train_eval_checkpoint_best"
    assert summary["evaluate_only"] is True
    assert summary["selected_epoch"] == trained["selected_epoch"]
    evaluated = read_summary(folder)["metrics"]
    assert set(evaluated) == {"testing", "evaluation"}
    for split in evaluated:
        assert evaluated[split] == trained["metrics"][split]
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["split"]) for r in rows] == [
        (str(trained["selected_epoch"]), s) for s in evaluated
    ]
    assert json.loads((folder / "args.json").read_text())["args"]["loss"] == "margin"  # the run's flags


def test_evaluate_only_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="--checkpoint"):
        main.main(["--evaluate_only", "--dataset", "digits"])
    with pytest.raises(ConfigError, match="no such file"):
        main.main(["--evaluate_only", "--checkpoint", str(tmp_path / "missing.pt")])
