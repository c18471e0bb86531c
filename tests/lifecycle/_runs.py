"""Helpers shared by the lifecycle tests: tiny digits runs, subprocess runs, folder comparison."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Wall-clock columns (and the rates and peaks of summary.json's "compute") differ between any two
# runs, and so may the checkout's state in the run card (a commit or an edit in between); everything
# else must be identical.
WALL_CLOCK = {"train_time", "eval_time", "wall_time", "compute", "git_commit", "git_dirty"}


def _is_wall_clock(key: str) -> bool:
    return key in WALL_CLOCK or key.startswith(("eval_time", "train_time")) or key.endswith("_images_per_s")


def tiny_args(save_path: Path, name: str, *extra: str, epochs: int = 3) -> list[str]:
    return [
        "--dataset", "digits", "--arch", "smallcnn_normalize", "--loss", "margin",
        "--batch_mining", "distance", "--n_epochs", str(epochs), "--lr", "1e-3", "--bs", "60",
        "--samples_per_class", "4", "--kernels", "0", "--no_progress", "--seed", "5",
        "--embed_dim", "16", "--evaluation_metrics", "e_recall@1", "e_recall@2", "mAP@R",
        "--save_path", str(save_path), "--savename", name, *extra,
    ]  # fmt: skip


def run_subprocess(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("DML_TEST_KILL_AT", None)
    if kill_at:
        env["DML_TEST_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if not _is_wall_clock(k)} for row in csv.DictReader(f)]


def read_summary(folder: Path) -> dict:
    return _drop_wall_clock(json.loads((folder / "summary.json").read_text()))


def _drop_wall_clock(x):
    if isinstance(x, dict):
        return {k: _drop_wall_clock(v) for k, v in x.items() if not _is_wall_clock(k)}
    return x
