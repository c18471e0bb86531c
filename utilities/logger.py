"""The run folder and optional Weights & Biases logging.

``<save_path>/<dataset>/<run name>/`` gets

* ``args.json``: the resolved namespace, git commit and package versions, written at start;
* ``metrics.csv``: one row per evaluation (epoch, split, every metric, eval time) plus one
  ``split = training`` row per epoch with the mean loss, training time and miner statistics;
* ``summary.json``: written at the end (selected epoch, selection split, every split's metrics at
  that epoch, wall time).

With ``--log_online`` the same numbers go to W&B (``WANDB_MODE=offline`` works without network).
The API key is read by wandb itself from ``WANDB_API_KEY`` or ``wandb login``; it is never a flag
and never written here. If W&B cannot start, the run continues with local logging only.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SECRET_MARKERS = ("key", "token", "secret", "password")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "numba", "scikit-learn", "numpy", "wandb"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def public_args(opt: argparse.Namespace) -> dict[str, Any]:
    """The namespace without anything that looks like a credential."""
    return {
        k: v
        for k, v in sorted(vars(opt).items())
        if not any(m in k.lower() for m in SECRET_MARKERS) and _jsonable(v)
    }


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def run_folder(opt: argparse.Namespace) -> Path:
    """``<save_path>/<dataset>/<name>``; a fresh suffix ``_1``, ``_2``... if it already exists."""
    if opt.savename == "group_plus_seed":
        name = f"{opt.group}_s{opt.seed}" if opt.log_online else ""
    else:
        name = opt.savename
    if not name:
        name = f"{opt.dataset}_{opt.loss}_{opt.arch}_{datetime.datetime.now():%Y-%m-%d-%H-%M-%S}"
    base = Path(opt.save_path) / opt.dataset / name
    path, i = base, 0
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}_{i}")
    path.mkdir(parents=True)
    return path


class RunLogger:
    """Writes the run folder; mirrors everything to W&B when ``--log_online`` is set."""

    def __init__(self, opt: argparse.Namespace, folder: Path | None = None, *, resume: bool = False) -> None:
        self.folder = folder or run_folder(opt)
        self.rows: list[dict[str, Any]] = []
        self.wandb = None
        if not resume:  # a resumed run keeps the args.json (and git commit) it started with
            info = {"args": public_args(opt), "git_commit": _git_commit(), "versions": _versions()}
            _write_atomic(self.folder / "args.json", json.dumps(info, indent=2))
        if opt.log_online:
            self.wandb = _start_wandb(opt, self.folder)

    def log(self, epoch: int, split: str, values: dict[str, Any]) -> None:
        row = {"epoch": epoch, "split": split}
        row.update({k: v for k, v in values.items() if _is_scalar(v)})
        self.rows.append(row)
        self._write_csv()
        self._online(lambda run: run.log(_wandb_row(row)))
        self._log_arrays(epoch, split, {k: v for k, v in values.items() if isinstance(v, (list, tuple))})

    def _log_arrays(self, epoch: int, split: str, arrays: dict[str, Any]) -> None:
        """Array metrics (e.g. ``rho_spectrum@0``) do not fit the CSV: one JSON line per evaluation
        in ``metrics_arrays.jsonl``, and a W&B histogram (plus one of log(value), as the study did)."""
        if not arrays:
            return
        with (self.folder / "metrics_arrays.jsonl").open("a") as f:
            f.write(
                json.dumps({"epoch": epoch, "split": split, **{k: list(v) for k, v in arrays.items()}}) + "\n"
            )
        if self.wandb is not None:
            import wandb  # optional and slow to import: only runs with --log_online pay for it

            hist = {}
            for k, v in arrays.items():
                values = np.asarray(v, dtype=np.float64)
                hist[f"{split}/{k}"] = wandb.Histogram(values)
                hist[f"{split}/LOG-{k}"] = wandb.Histogram(np.log(np.clip(values, 1e-300, None)))
            self._online(lambda run: run.log(hist | {"epoch": epoch}))

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Resume: the checkpoint's rows replace metrics.csv (dropping rows of an unfinished epoch);
        a new W&B run (same name) gets the history replayed."""
        self.rows = [dict(r) for r in rows]
        self._write_csv()
        for row in self.rows:
            self._online(lambda run, row=row: run.log(_wandb_row(row)))

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [c for c in row if c not in columns]
        tmp = self.folder / "metrics.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.folder / "metrics.csv")

    def summary(self, summary: dict[str, Any]) -> None:
        # atomic: the sweep script takes an existing summary.json as "this run is finished"
        _write_atomic(self.folder / "summary.json", json.dumps(summary, indent=2, default=_json_default))

        def finish(run) -> None:
            for k, v in _flatten(summary).items():
                run.summary[k] = v
            run.finish()

        self._online(finish)

    def _online(self, action) -> None:
        """One W&B call; its first failure (a dead service, a lost network) switches W&B off for
        the rest of the run with one line, and the local logs carry on."""
        if self.wandb is None:
            return
        try:
            action(self.wandb)
        except Exception as err:
            log.warning(f"W&B failed ({type(err).__name__}: {err}); continuing with local logging only")
            self.wandb = None


def _wandb_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.csv row as W&B keys ``<split>/<metric>``, stepped by epoch."""
    return {f"{row['split']}/{k}": v for k, v in row.items() if k not in ("epoch", "split")} | {
        "epoch": row["epoch"]
    }


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        elif _is_scalar(v):
            out[key] = v
    return out


def _start_wandb(opt: argparse.Namespace, folder: Path):
    try:
        import wandb  # optional and slow to import: only runs with --log_online pay for it

        return wandb.init(
            project=opt.project,
            group=opt.group,
            name=folder.name,
            dir=str(folder),
            config=public_args(opt),
            reinit=True,
        )
    except Exception as err:  # any failure to start W&B must not cost the run
        log.warning(f"W&B logging disabled, continuing with local logging only: {type(err).__name__}: {err}")
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a killed process never leaves a truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
