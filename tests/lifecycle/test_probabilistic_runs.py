"""Every probabilistic loss trains through main.py on digits and resumes bit-exactly.

Per loss: an uninterrupted 2-epoch run against a 1-epoch run resumed to 2 epochs (the distribution
head, the loss's Monte-Carlo generators and its learnable parameters are all in the checkpoint),
with the uncertainty and verification metrics and the method's own retrieval score where it has
one. The resumed run's metrics.csv and summary.json must equal the uninterrupted run's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import criteria
import main
from tests.lifecycle._runs import read_rows, read_summary, tiny_args

PROBABILISTIC = [n for n in criteria.REGISTRY.names() if criteria.distribution(n) != "dirac"]
SCORE = {"gaussian": "mls", "vmf": "expected_cosine"}
METRICS = ["e_recall@1", "mAP@R", "erc_recall@1", "confidence_accuracy", "roc_auc", "eer"]


def test_the_issue_methods_are_probabilistic():
    assert {"hib", "pfe", "dul_cls", "dul_reg", "spe", "scf", "vmf_fl", "vmf"} <= set(PROBABILISTIC)


@pytest.mark.parametrize("name", PROBABILISTIC)
def test_trains_and_resumes_bit_exactly(name, tmp_path):
    kind = criteria.distribution(name)
    extra = ["--loss", name, "--evaluation_metrics", *METRICS, "--no_train_metrics",
             "--retrieval_score", SCORE[kind], "--save_embeddings"]  # fmt: skip
    main.main(tiny_args(tmp_path, "full", *extra, epochs=2))
    main.main(tiny_args(tmp_path, "part", *extra, epochs=1))
    part, full = tmp_path / "digits" / "part", tmp_path / "digits" / "full"
    main.main(["--resume", str(part), "--n_epochs", "2"])
    assert read_rows(part) == read_rows(full)
    assert read_summary(part) == read_summary(full)

    args = json.loads((full / "args.json").read_text())["args"]
    assert args["embedding_distribution"] == kind  # resolved from the loss ("auto")
    test = json.loads((full / "summary.json").read_text())["metrics"]["testing"]
    for key in METRICS:
        assert np.isfinite(test[key]), key
    assert 0.0 <= test["erc_recall@1"] <= 1.0 and 0.5 < test["roc_auc"] <= 1.0
    saved = np.load(full / "embeddings_testing.npz")
    width = 16 if kind == "gaussian" else 1  # log σ² per dimension, or log κ
    assert saved["params"].shape == (len(saved["labels"]), width)
    assert np.isfinite(saved["confidence"]).all() and saved["embeddings"].shape[1] == 16
    # the selected epoch's embeddings are kept apart from the per-epoch file (query bootstrap)
    selected = np.load(full / "embeddings_testing_selected.npz")
    summary = json.loads((full / "summary.json").read_text())
    assert int(selected["epoch"]) == summary["selected_epoch"] and int(saved["epoch"]) == 1
