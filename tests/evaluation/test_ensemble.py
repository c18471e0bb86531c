"""``python -m evaluation --ensemble``: two 1-epoch digits fold runs (``--cv_folds 2``); the
concatenated result equals a concatenation built by hand from the runs' own saved test embeddings,
the separated results are the runs' own test metrics, and runs that are no folds of one partition
are refused in one line."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import metrics
from evaluation import ensemble
from evaluation.__main__ import build_parser
from evaluation.__main__ import main as evaluation_main
from tests.lifecycle._runs import tiny_args
from utilities.errors import ConfigError

METRICS = ["e_recall@1", "e_recall@2", "mAP@R"]


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> list[Path]:
    save = tmp_path_factory.mktemp("cv")
    out = []
    for i in range(2):  # --save_embeddings: the run's test embeddings of its only (selected) epoch
        name = f"DIG_cv_f{i}_s5"
        extra = ("--cv_folds", "2", "--cv_fold", str(i), "--no_train_metrics", "--save_embeddings")
        main.main(tiny_args(save, name, *extra, epochs=1))
        out.append(save / "digits" / name)
    return out


def test_concatenation_equals_a_hand_built_one(folds, tmp_path):
    out = tmp_path / "ens.json"
    result = evaluation_main(["--ensemble", *map(str, folds), "--device", "cpu", "--json", str(out),
                              "--evaluation_metrics", *METRICS])  # fmt: skip
    parts, labels = [], None
    for folder in folds:
        data = np.load(folder / "embeddings_testing.npz")
        summary = json.loads((folder / "summary.json").read_text())
        assert int(data["epoch"]) == summary["selected_epoch"] == 0
        parts.append(torch.nn.functional.normalize(torch.from_numpy(data["embeddings"]), dim=1))
        assert labels is None or (labels == data["labels"]).all()
        labels = data["labels"]
    by_hand = torch.cat(parts, dim=1) / math.sqrt(2)
    assert by_hand.shape == (896, 32)  # 2 x 16-d over the 896 test digits
    expected = metrics.compute(METRICS, by_hand, torch.from_numpy(labels), seed=1)
    assert result["concatenated"]["dim"] == 32
    for name in METRICS:
        assert result["concatenated"]["metrics"][name] == pytest.approx(expected[name], abs=1e-6)

    # separated: each fold alone is what its run reported on the test split at its selected epoch
    sep = result["separated"]
    for folder, fold in zip(folds, sep["per_fold"], strict=True):
        tested = json.loads((folder / "summary.json").read_text())["metrics"]["testing"]
        for name in METRICS:
            assert fold[name] == pytest.approx(tested[name], abs=1e-6)
    for name in METRICS:
        values = [f[name] for f in sep["per_fold"]]
        assert sep["mean"][name] == pytest.approx(statistics.fmean(values))
        assert sep["std"][name] == pytest.approx(statistics.stdev(values))
    written = json.loads(out.read_text())
    assert written["folds"] == [0, 1] and written["cv_folds"] == 2 and written["dataset"] == "digits"
    assert written["test_split"]["images"] == 896 and written["separated"]["dims"] == [16, 16]


def test_the_same_fold_twice_is_refused(folds):
    with pytest.raises(ConfigError, match=r"same fold \(--cv_fold 0\)"):
        evaluation_main(["--ensemble", str(folds[0]), str(folds[0]), "--device", "cpu"])


def test_unfinished_or_missing_runs_are_refused(folds, tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        evaluation_main(["--ensemble", str(folds[0]), str(tmp_path), "--device", "cpu"])
    (tmp_path / "args.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no checkpoint_best\.pt"):
        evaluation_main(["--ensemble", str(folds[0]), str(tmp_path), "--device", "cpu"])


def _run(fold: int, **flags) -> ensemble.FoldRun:
    summary = {"splits": {"testing": {"hash": flags.pop("hash", "abc")}}}
    opt = {"dataset": "digits", "arch": "smallcnn_normalize", "cv_folds": 2, "cv_fold": fold,
           "cv_scheme": "random", "seed": 5, **flags}  # fmt: skip
    return ensemble.FoldRun(Path(f"/runs/f{fold}"), argparse.Namespace(**opt), {}, summary)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"dataset": "cub200"}, "differ in --dataset"),
        ({"arch": "resnet50_frozen_normalize"}, "backbone"),
        ({"hash": "def"}, "test split"),
        ({"seed": 6}, "partition"),
        ({"cv_scheme": "mlrc"}, "partition"),
        ({"cv_folds": 4}, "partition"),
        ({"cv_folds": 0, "cv_fold": 0}, "not a fold run"),
    ],
)
def test_runs_of_other_setups_are_refused(other, message):
    ensemble.check_folds([_run(0), _run(1)])  # the matching pair passes
    with pytest.raises(ConfigError, match=message):
        ensemble.check_folds([_run(0), _run(1, **other)])


def test_the_backbone_modifiers_and_mlrc_seeds_may_differ():
    ensemble.check_folds([_run(0), _run(1, arch="smallcnn")])
    ensemble.check_folds([_run(0, cv_scheme="mlrc"), _run(1, cv_scheme="mlrc", seed=9)])
    with pytest.raises(ConfigError, match="at least two"):
        ensemble.check_folds([_run(0)])


def test_embeddings_and_ensemble_exclude_each_other(capsys):
    for argv in (["--embeddings", "a.npz", "--ensemble", "r0", "r1"], []):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
    assert "--embeddings" in capsys.readouterr().err


def test_default_json_is_named_after_the_group():
    assert ensemble.default_json(["/r/CUB_f0_s1", "/r/CUB_f1_s1"]) == Path("/r/CUB_s1_ensemble.json")
    assert ensemble.default_json(["/r/a", "/r/b"]) == Path("/r/folds_ensemble.json")
