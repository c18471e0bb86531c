"""evaluate_split (preallocated embedding, query/gallery from the dataset, timings, saving),
the ``python -m evaluation`` entry point, train-split thinning, and main.py's use of them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluation
import metrics
from evaluation.__main__ import main as eval_main
from tests.metrics.test_retrieval import clustered
from utilities.errors import ConfigError


class Points(torch.utils.data.Dataset):
    """Items ``(x, label, index)``; optional query/gallery masks like datasets.base.SplitDataset."""

    def __init__(self, x, y, is_query=None, is_gallery=None):
        self.x, self.labels, self.is_query, self.is_gallery = x, y, is_query, is_gallery

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i]), i


class Scale(torch.nn.Module):
    def forward(self, x):
        return 2.0 * x


def loader(ds, shuffle=False):
    return torch.utils.data.DataLoader(ds, batch_size=7, shuffle=shuffle)


def test_embed_fills_by_index_even_when_the_loader_shuffles():
    x, y = clustered(seed=1)
    emb, lab = evaluation.embed(Scale(), loader(Points(x, y), shuffle=True), torch.device("cpu"))
    assert torch.equal(emb, 2 * x) and torch.equal(lab, y)


def test_evaluate_split_uses_the_datasets_query_gallery_masks_and_reports_times(tmp_path):
    x, y = clustered(seed=2)
    q = torch.arange(len(y)) % 2 == 0
    names = ["e_recall@1", "mAP@R", "nmi", "rho_spectrum@0"]
    got = evaluation.evaluate_split(
        Scale(),
        loader(Points(x, y, q, ~q)),
        names,
        torch.device("cpu"),
        seed=5,
        save_to=tmp_path / "e.npz",
        epoch=3,
    )
    want = metrics.compute(names, 2 * x, y, query_mask=q, gallery_mask=~q, seed=5)
    loo = metrics.compute(["e_recall@1"], 2 * x, y)
    assert got["e_recall@1"] == want["e_recall@1"] != loo["e_recall@1"]
    assert got["mAP@R"] == want["mAP@R"] and got["nmi"] == want["nmi"]
    assert got["rho_spectrum@0"] == want["rho_spectrum@0"]
    assert got["eval_time"] >= got["eval_time_stages"]["embed"] > 0 and got["eval_time_stages"]["ranking"] > 0
    saved = np.load(tmp_path / "e.npz")
    assert np.array_equal(saved["embeddings"], 2 * x.numpy()) and np.array_equal(saved["labels"], y.numpy())
    assert np.array_equal(saved["is_query"], q.numpy()) and int(saved["epoch"]) == 3


def test_cli_evaluates_a_saved_file_and_writes_json(tmp_path, capsys):
    x, y = clustered(seed=3)
    q = torch.arange(len(y)) % 3 == 0
    path = evaluation.save_embeddings(tmp_path / "emb.npz", x, y, is_query=q, is_gallery=~q)
    names = ["e_recall@1", "precision@1", "mAP_c", "rho_spectrum@0", "rho_spectrum@99"]
    out = tmp_path / "m.json"
    eval_main(["--embeddings", str(path), "--evaluation_metrics", *names, "--json", str(out), "--seed", "2"])
    want = metrics.compute(names, x, y, query_mask=q, gallery_mask=~q, seed=2)
    stored = json.loads(out.read_text())["metrics"]
    assert stored["e_recall@1"] == want["e_recall@1"] and stored["mAP_c"] == want["mAP_c"]
    assert stored["rho_spectrum@0"] == list(want["rho_spectrum@0"])
    assert stored["rho_spectrum@99"] is None and math.isnan(want["rho_spectrum@99"])  # NaN -> null
    assert "e_recall@1" in capsys.readouterr().out
    # default JSON path next to the input, leave-one-out when the file has no masks
    plain = evaluation.save_embeddings(tmp_path / "plain.npz", x, y)
    eval_main(["--embeddings", str(plain), "--evaluation_metrics", "e_recall@1"])
    stored = json.loads((tmp_path / "plain.npz.metrics.json").read_text())["metrics"]
    assert stored["e_recall@1"] == metrics.compute(["e_recall@1"], x, y)["e_recall@1"]


def test_cli_bad_input_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        eval_main(["--embeddings", str(tmp_path / "missing.npz")])
    np.savez(tmp_path / "bad.npz", feats=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="lacks"):
        eval_main(["--embeddings", str(tmp_path / "bad.npz")])
    np.savez(tmp_path / "mask.npz", embeddings=np.zeros((3, 2)), labels=np.zeros(3), is_query=np.ones(3))
    with pytest.raises(ConfigError, match="is_query"):
        eval_main(["--embeddings", str(tmp_path / "mask.npz")])


def test_cli_rejects_an_unknown_metric_when_the_flags_are_parsed(tmp_path, capsys):
    """The evaluation flags are main.py's: an unknown metric is refused by argparse (exit 2)."""
    np.savez(tmp_path / "ok.npz", embeddings=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(SystemExit) as err:
        eval_main(["--embeddings", str(tmp_path / "ok.npz"), "--evaluation_metrics", "recall@1"])
    assert err.value.code == 2
    assert "unknown metric 'recall@1'" in capsys.readouterr().err


def test_train_split_thinning():
    class Opt:
        train_eval_every, n_epochs = 3, 8

    due = [e for e in range(8) if evaluation.should_evaluate("evaluation", e, Opt)]
    assert due == [2, 5, 7]  # every third epoch and the last one
    assert all(evaluation.should_evaluate("testing", e, Opt) for e in range(8))


def test_unknown_metric_is_rejected_when_the_flags_are_parsed():
    import parameters

    with pytest.raises(SystemExit) as err:
        parameters.parse(["--dataset", "digits", "--evaluation_metrics", "e_recall@1", "recall@1"])
    assert err.value.code == 2


@pytest.mark.slow
def test_main_thins_the_train_split_saves_embeddings_and_logs_arrays(tmp_path):
    import main

    summary = main.main(
        [
            "--dataset",
            "digits",
            "--arch",
            "smallcnn_normalize",
            "--n_epochs",
            "2",
            "--lr",
            "1e-3",
            "--bs",
            "100",
            "--samples_per_class",
            "4",
            "--kernels",
            "0",
            "--save_path",
            str(tmp_path),
            "--no_progress",
            "--train_eval_every",
            "2",
            "--save_embeddings",
            "--evaluation_metrics",
            "e_recall@1",
            "mAP@R",
            "rho_spectrum@0",
            "rho_spectrum@2",
        ]
    )
    (folder,) = (tmp_path / "digits").iterdir()
    rows = [json.loads(line) for line in (folder / "metrics_arrays.jsonl").read_text().splitlines()]
    # testing at epochs 0 and 1, the training split only at the last epoch (1)
    assert [(r["epoch"], r["split"]) for r in rows] == [(0, "testing"), (1, "testing"), (1, "evaluation")]
    assert sum(rows[0]["rho_spectrum@0"]) == pytest.approx(1.0)
    csv = (folder / "metrics.csv").read_text()
    assert "rho_spectrum@2" in csv and "rho_spectrum@0" not in csv and "eval_time" in csv
    saved = np.load(folder / "embeddings_testing.npz")
    assert saved["embeddings"].shape == (896, 128) and int(saved["epoch"]) == 1
    assert summary["selected_epoch"] in (0, 1)


def test_forked_dataloader_workers_still_run_after_the_numba_kernel(tmp_path):
    # main.py evaluates (numba's thread pool starts in the parent) and then forks the next epoch's
    # DataLoader workers; a fork after a started OpenMP pool must not hang or crash the workers
    script = tmp_path / "fork.py"
    script.write_text(
        "import torch, metrics\n"
        "x = torch.randn(600, 8); y = torch.arange(600) % 20\n"
        "r = metrics.compute(['e_recall@1', 'mAP@R'], x, y, backend='numba')\n"
        "ds = torch.utils.data.TensorDataset(torch.randn(64, 3), torch.arange(64))\n"
        "ctx = torch.multiprocessing.get_context('fork')\n"
        "dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=ctx)\n"
        "print(sum(int(b[1].sum()) for b in dl), round(r['e_recall@1'], 6))\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    total, recall = out.stdout.split()
    assert int(total) == sum(range(64)) and 0.0 <= float(recall) <= 1.0


def test_bad_backend_or_selection_metric_is_a_config_error_before_training():
    from types import SimpleNamespace

    def opt(backend="auto", storage=("e_recall@1",), computed=("e_recall@1", "rho_spectrum@0")):
        return SimpleNamespace(
            eval_backend=backend,
            eval_index="flat",
            storage_metrics=list(storage),
            evaluation_metrics=list(computed),
            retrieval_score="mean",
            embedding_distribution="dirac",
        )

    with pytest.raises(ConfigError, match="CPU tensors only"):
        evaluation.check_options(opt("numba"), torch.device("cuda"))
    for backend in ("auto", "torch"):
        evaluation.check_options(opt(backend), torch.device("cuda"))
    evaluation.check_options(opt("numba"), torch.device("cpu"))
    # a selection metric that is never computed would silently select nothing
    with pytest.raises(ConfigError, match="must be one of --evaluation_metrics"):
        evaluation.check_options(opt(storage=["mAP@R"]), torch.device("cpu"))
    # an array cannot be compared across epochs
    with pytest.raises(ConfigError, match="array metric"):
        evaluation.check_options(opt(storage=["rho_spectrum@0"]), torch.device("cpu"))
    # the faiss search serves the first k neighbours only: untruncated mAP and mrr are refused
    evaluation.check_options(opt("faiss", computed=("e_recall@1", "mAP@R")), torch.device("cpu"))
    for exact_only in ("mAP", "mrr"):
        with pytest.raises(ConfigError, match=f"{exact_only} needs the exact ranking pass"):
            evaluation.check_options(opt("faiss", computed=("e_recall@1", exact_only)), torch.device("cpu"))


def test_cli_default_metrics_follow_the_dataset_the_file_names(tmp_path):
    """Without --evaluation_metrics, a file that names its dataset gets that dataset's Recall@k
    ranks; a file that names none (or an unknown one) the study's R@1, 2, 4."""
    x, y = clustered(seed=4)
    cases = {"inshop": [1, 10, 20, 30, 40], "someone_elses": [1, 2, 4], None: [1, 2, 4]}
    for name, ks in cases.items():
        extra = {} if name is None else {"dataset": np.array(name)}
        path = evaluation.save_embeddings(tmp_path / f"{name}.npz", x, y, **extra)
        got = eval_main(["--embeddings", str(path)])
        assert [int(k.split("@")[1]) for k in got if k.startswith("e_recall@")] == ks
        assert "mAP@R" in got and "nmi" in got
