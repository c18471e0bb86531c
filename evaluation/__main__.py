"""Evaluate saved embeddings: ``python -m evaluation --embeddings FILE.npz [...]``.

The file holds ``embeddings`` (N, D) and ``labels`` (N,), optionally boolean ``is_query`` and
``is_gallery`` (query/gallery protocol; otherwise leave-one-out), as written by
``main.py --save_embeddings``. Prints every metric and writes them as JSON (``--json OUT``,
default ``<FILE>.metrics.json``). Exit code 2 with one line on stderr for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

import datasets
import metrics
from evaluation.options import (
    STUDY_RECALL_AT,
    add_evaluation_args,
    add_setup_args,
    metrics_for,
    search_options,
)
from utilities.cli import HelpFormatter, ShortUsageParser, run_entry_point, setup_logging
from utilities.errors import ConfigError
from utilities.seeding import resolve_device

log = logging.getLogger("evaluation")


def build_parser() -> argparse.ArgumentParser:
    p = ShortUsageParser(
        prog="python -m evaluation",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--embeddings", required=True, help=".npz with arrays embeddings (N, D), labels (N,)")
    add_evaluation_args(p.add_argument_group("evaluation"))
    add_setup_args(p.add_argument_group("setup (the device computes the metrics)"))
    p.add_argument("--json", default=None, help="output JSON; by default <FILE>.metrics.json")
    return p


def load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"--embeddings: no such file: {path}")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--embeddings: cannot read {path} as .npz: {err}") from None
    missing = [k for k in ("embeddings", "labels") if k not in data]
    if missing:
        raise ConfigError(
            f"--embeddings: {path} lacks array(s) {', '.join(missing)} (found: {', '.join(data)})"
        )
    emb, lab = data["embeddings"], data["labels"]
    if emb.ndim != 2 or lab.ndim != 1 or len(emb) != len(lab):
        raise ConfigError(
            f"--embeddings: need embeddings (N, D) and labels (N,), got {emb.shape} and {lab.shape}"
        )
    for key in ("is_query", "is_gallery"):
        if key in data and (data[key].dtype != np.bool_ or data[key].shape != lab.shape):
            raise ConfigError(f"--embeddings: {key} must be a boolean array of shape {lab.shape}")
    return data


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    opt = build_parser().parse_args(argv)
    path = Path(opt.embeddings)
    data = load(path)
    if opt.evaluation_metrics is None:  # the Recall@k ranks of the dataset the file names, if any
        name = str(data["dataset"]) if "dataset" in data else ""
        opt.evaluation_metrics = metrics_for(
            datasets.recall_at(name) if name in datasets.REGISTRY else STUDY_RECALL_AT
        )
    device = resolve_device(opt.device, opt.gpu)
    try:  # a metric the faiss search cannot serve is refused before any metric is computed
        metrics.check_faiss_request(opt.evaluation_metrics, opt.eval_backend, opt.eval_index)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    masks = {k: torch.from_numpy(data[k]) if k in data else None for k in ("is_query", "is_gallery")}
    timings: dict[str, float] = {}
    try:
        results = metrics.compute(
            opt.evaluation_metrics,
            torch.from_numpy(data["embeddings"]),
            torch.from_numpy(data["labels"]),
            query_mask=masks["is_query"],
            gallery_mask=masks["is_gallery"],
            seed=opt.seed,
            device=device,
            **search_options(opt),
            timings=timings,
        )
    except ValueError as err:
        raise ConfigError(f"--embeddings {path}: {err}") from None
    width = max(len(k) for k in results)
    for name, value in results.items():
        shown = f"[{', '.join(f'{v:.4f}' for v in value)}]" if metrics.is_array(value) else f"{value:.4f}"
        log.info(f"{name:<{width}}  {shown}")
    out = Path(opt.json) if opt.json else path.with_name(path.name + ".metrics.json")
    payload = {"embeddings": str(path), "n": len(data["labels"]), "metrics": results, "timings": timings}
    out.write_text(json.dumps(_clean(payload), indent=2))
    log.info(f"wrote {out}")
    return results


def _clean(v):
    """JSON has no NaN/inf: write them as null / "inf"."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def cli() -> None:
    run_entry_point(main)


if __name__ == "__main__":
    cli()
