"""Evaluate saved embeddings: ``python -m evaluation --embeddings FILE.npz [...]``.

The file holds ``embeddings`` (N, D) and ``labels`` (N,), optionally boolean ``is_query`` and
``is_gallery`` (query/gallery protocol; otherwise leave-one-out), as written by
``main.py --save_embeddings``. Prints every metric and writes them as JSON (``--json OUT``,
default ``<FILE>.metrics.json``). ``--show_retrievals N`` also draws N queries with their nearest
gallery items into a PNG (:mod:`evaluation.retrievals`; needs the file's ``paths``). Exit code 2
with one line on stderr for bad input.

``--ensemble RUN_f0 RUN_f1 ...`` (instead of ``--embeddings``) evaluates the fold runs of
``main.py --cv_folds K`` as the Metric Learning Reality Check does: the test split embedded by every
fold's selected checkpoint, the metrics of the concatenated embedding and the mean ± std of the
folds alone (:mod:`evaluation.ensemble`); the JSON goes to ``--json`` or ``<group>_ensemble.json``
next to the runs.
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
from evaluation import ensemble, retrievals
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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", help=".npz with arrays embeddings (N, D), labels (N,)")
    source.add_argument(
        "--ensemble",
        nargs="+",
        metavar="RUN",
        help="run folders of different folds of one main.py --cv_folds partition: evaluate the test "
        "split with their concatenated embeddings and with each alone (mean ± std)",
    )
    p.add_argument(
        "--source_path",
        default=None,
        help="with --ensemble: the datasets' parent folder, if not the one the runs stored",
    )
    add_evaluation_args(p.add_argument_group("evaluation"))
    add_setup_args(p.add_argument_group("setup (the device computes the metrics)"))
    p.add_argument(
        "--json",
        default=None,
        help="output JSON; by default <FILE>.metrics.json (--ensemble: <group>_ensemble.json)",
    )
    add_retrieval_args(
        p.add_argument_group("retrievals (a picture of queries and their nearest gallery items)")
    )
    return p


def add_retrieval_args(group: argparse._ArgumentGroup) -> None:
    """The flags of the retrieval picture (:mod:`evaluation.retrievals`)."""
    group.add_argument(
        "--show_retrievals",
        type=int,
        default=0,
        metavar="N",
        help="also draw N queries, each with its --retrieval_k nearest gallery items (green solid ✓ "
        "frame: same label, red dashed ✗: another), into a PNG; 0: no picture",
    )
    group.add_argument("--retrieval_k", type=int, default=5, help="nearest gallery items drawn per query")
    group.add_argument(
        "--retrieval_order",
        default="random",
        choices=retrievals.ORDERS,
        help="which queries: random (seeded by --seed), first (in row order), or worst (the largest "
        "rank of the first correct result first)",
    )
    group.add_argument(
        "--retrievals_out", default=None, help="the PNG; by default <FILE>.retrievals.png next to the .npz"
    )
    group.add_argument(
        "--image_root",
        default=None,
        help="folder the file's image paths are resolved against: relative paths, and absolute ones "
        "whose dataset has moved (by default the paths are used as saved)",
    )


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
    if "paths" in data and (data["paths"].dtype.kind != "U" or data["paths"].shape != lab.shape):
        raise ConfigError(f"--embeddings: paths must be a string array of shape {lab.shape}")
    return data


def check_retrieval_flags(opt: argparse.Namespace, data: dict[str, np.ndarray], path: Path) -> None:
    """Before any metric is computed: sensible numbers, and a file that names its images."""
    if opt.show_retrievals < 0 or opt.retrieval_k < 1:
        raise ConfigError(
            f"--show_retrievals {opt.show_retrievals} --retrieval_k {opt.retrieval_k}: "
            "need N >= 0 (0: no picture) and k >= 1"
        )
    if opt.show_retrievals:
        retrievals.require_paths(data, path)
        if opt.image_root is not None and not Path(opt.image_root).is_dir():
            raise ConfigError(f"--image_root {opt.image_root}: no such folder")


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    opt = build_parser().parse_args(argv)
    if opt.ensemble:
        return _ensemble(opt)
    path = Path(opt.embeddings)
    data = load(path)
    check_retrieval_flags(opt, data, path)
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
    # a file main.py wrote carries the distribution parameters and confidences (uncertainty metrics,
    # --retrieval_score); an older or foreign file is a point embedding without them
    optional = {k: torch.from_numpy(data[k]) if k in data else None for k in ("params", "confidence")}
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
            confidence=optional["confidence"],
            params=optional["params"],
            distribution=str(data["distribution"]) if "distribution" in data else "dirac",
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
    if opt.show_retrievals:
        grid = retrievals.show_retrievals(
            data,
            n=opt.show_retrievals,
            k=opt.retrieval_k,
            order=opt.retrieval_order,
            seed=opt.seed,
            out=opt.retrievals_out or path.with_name(path.name + ".retrievals.png"),
            image_root=opt.image_root,
            source=path,
        )
        log.info(f"wrote {grid.path}: {len(grid.rows)} queries ({grid.order}) × {grid.k} nearest")
    return results


def _ensemble(opt: argparse.Namespace) -> dict:
    payload = ensemble.evaluate(opt)
    out = Path(opt.json) if opt.json else ensemble.default_json(opt.ensemble)
    out.write_text(json.dumps(_clean(payload), indent=2))
    log.info(f"wrote {out}")
    return payload


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
