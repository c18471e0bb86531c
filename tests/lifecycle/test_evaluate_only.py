"""--evaluate_only --checkpoint: the metrics of a checkpoint, without training, equal those the
training run logged at that epoch (wall-clock columns excluded)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

import main
from tests.lifecycle._runs import read_summary
from utilities.errors import ConfigError


def test_evaluate_only_reproduces_the_selected_epoch(reference, tmp_path):
    run = reference
    trained = read_summary(run)

    out = tmp_path / "evaluated"
    summary = main.main(
        [
            "--evaluate_only",
            "--checkpoint",
            str(run / "checkpoint_best.pt"),
            "--save_path",
            str(out),
            "--save_embeddings",
        ]
    )
    folder = out / "digits" / "ref_eval_checkpoint_best"
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

    # --save_embeddings: the exported test embeddings give the reported Recall@1 (sklearn 1-NN oracle)
    saved = np.load(folder / "embeddings_testing.npz")
    x, y = saved["embeddings"], saved["labels"]
    assert x.shape == (896, 16) and sorted(set(y.tolist())) == [0, 1, 2, 3, 4]
    _, idx = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    nearest = np.where(idx[:, 0] == np.arange(len(x)), idx[:, 1], idx[:, 0])
    assert np.mean(y[nearest] == y) == pytest.approx(evaluated["testing"]["e_recall@1"])


def test_evaluate_only_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="--checkpoint"):
        main.main(["--evaluate_only", "--dataset", "digits"])
    with pytest.raises(ConfigError, match="no such file"):
        main.main(["--evaluate_only", "--checkpoint", str(tmp_path / "missing.pt")])
