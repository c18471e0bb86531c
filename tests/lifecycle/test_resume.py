"""Kill-and-resume: a run killed at any point (SIGKILL, in a subprocess) and resumed with
``--resume`` ends with the same metrics.csv and summary.json as an uninterrupted run.

Wall-clock columns (train_time, eval_time, wall_time, the images/s and summary.json's compute
entry) are excluded from the comparison; every other value, including the training loss of every
epoch, must be identical (CPU).
"""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch

import main
from tests.lifecycle._runs import assert_killed, read_rows, read_summary, run_subprocess, tiny_args
from utilities.errors import ConfigError


def test_killed_anywhere_then_resumed_equals_uninterrupted(reference, tmp_path):
    folder = tmp_path / "digits" / "run"
    # 1) killed during the first epoch: no checkpoint yet, the resume restarts from scratch
    assert_killed(run_subprocess(tiny_args(tmp_path, "run"), kill_at="train:0:3"))
    assert not (folder / "checkpoint_last.pt").exists()
    # 2) killed mid-epoch 1 (step 4 of 15): epoch 1 is redone from the epoch-0 checkpoint
    assert_killed(run_subprocess(["--resume", str(folder)], kill_at="train:1:4"))
    # 3) killed between epochs: after epoch 2 was logged to metrics.csv but before its checkpoint was written
    assert_killed(run_subprocess(["--resume", str(folder)], kill_at="logged:2"))
    assert [r["epoch"] for r in read_rows(folder)].count("2") > 0  # the stale rows are on disk
    main.main(["--resume", str(folder)])

    assert read_rows(folder) == read_rows(reference)
    assert read_summary(folder) == read_summary(reference)
    assert len(read_rows(reference)) == 3 * 3  # 3 epochs × (training, testing, evaluation)


def test_resume_between_epochs_with_dataloader_workers(tmp_path):
    """Workers draw the augmentation randomness: their per-epoch seeds must survive a resume."""
    extra = ["--kernels", "2"]
    main.main(tiny_args(tmp_path, "full", *extra, epochs=2))
    main.main(tiny_args(tmp_path, "part", *extra, epochs=1))
    part = tmp_path / "digits" / "part"
    before = torch.load(part / "checkpoint_last.pt", weights_only=True)["peak_memory"]
    first_rate = float(
        next(csv.DictReader((part / "metrics.csv").read_text().splitlines()))["train_images_per_s"]
    )
    main.main(["--resume", str(part), "--n_epochs", "2"])
    assert read_rows(part) == read_rows(tmp_path / "digits" / "full")
    assert read_summary(part) == read_summary(tmp_path / "digits" / "full")

    # the compute accounting spans both processes: the mean over every epoch's row (the restored
    # one unchanged), the peak at least the first process's
    with (part / "metrics.csv").open() as f:
        rates = [float(r["train_images_per_s"]) for r in csv.DictReader(f) if r["split"] == "training"]
    assert len(rates) == 2 and rates[0] == first_rate
    compute = json.loads((part / "summary.json").read_text())["compute"]
    assert compute["train_images_per_s"] == pytest.approx(sum(rates) / 2, rel=1e-12)
    assert compute["peak_host_mem_mb"] >= before["host_mb"] > 0 and compute["peak_gpu_mem_mb"] is None


def test_resume_with_a_storage_sampler_and_a_cross_batch_memory(tmp_path):
    """The sampler's embedding memory and the loss's XBM memory are part of the checkpoint."""
    extra = ["--data_sampler", "greedy_coreset", "--data_batchmatch_bigbs", "240", "--xbm_size", "120",
             "--loss", "contrastive", "--no_train_metrics"]  # fmt: skip
    main.main(tiny_args(tmp_path, "full", *extra, epochs=2))
    main.main(tiny_args(tmp_path, "part", *extra, epochs=1))
    main.main(["--resume", str(tmp_path / "digits" / "part"), "--n_epochs", "2"])
    assert read_rows(tmp_path / "digits" / "part") == read_rows(tmp_path / "digits" / "full")


def test_resume_refuses_to_change_the_experiment(reference):
    with pytest.raises(ConfigError, match="--lr"):
        main.main(["--resume", str(reference), "--lr", "0.1"])


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        main.main(["--resume", str(tmp_path)])


def test_resume_bad_folder_exits_with_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["main.py", "--resume", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_info:
        main.cli()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --resume")
