"""The ρ-distance miner inside main.py: its flip count reaches the per-epoch training log."""

from __future__ import annotations

import csv

import pytest

import main


@pytest.mark.slow
def test_rho_flips_are_logged_per_epoch(tmp_path):
    main.main([
        "--dataset", "digits", "--arch", "smallcnn_normalize", "--loss", "margin",
        "--batch_mining", "rho_distance", "--miner_rho_distance_cp", "0.5", "--n_epochs", "2",
        "--bs", "60", "--samples_per_class", "4", "--kernels", "0", "--device", "cpu", "--no_progress",
        "--embed_dim", "16", "--evaluation_metrics", "e_recall@1", "--no_train_metrics",
        "--save_path", str(tmp_path), "--savename", "rho",
    ])  # fmt: skip
    with (tmp_path / "digits" / "rho" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "training"]
    assert len(rows) == 2
    for row in rows:
        flips, triplets = float(row["miner_rho_flips"]), float(row["miner_rho_triplets"])
        assert triplets > 0 and 0.35 < flips / triplets < 0.65
