"""Ensemble of cross-validation folds: ``python -m evaluation --ensemble RUN_f0 RUN_f1 ...``.

"A Metric Learning Reality Check" (Musgrave, Belongie, Lim, ECCV 2020) trains one model per
class-disjoint fold (here ``main.py --cv_folds K --cv_fold i``, see :mod:`datasets.base`) and
reports two numbers on the test split:

* **concatenated**: the K models' test embeddings, each L2-normalised, joined into one vector
  (4 × 128 = 512-d) and scaled by 1/√K back to unit length, evaluated as one embedding;
* **separated**: each fold's model alone on the test split, the mean (± sample std, ddof 1) of the
  K results.

Every run contributes its selected checkpoint (``checkpoint_best.pt``; the epoch its fold's
validation split chose). The runs must be finished folds of one partition of one dataset: the same
dataset, test split (the class-split hash of their ``summary.json``, which must also be the hash
of the test split read here), backbone, ``--cv_folds``, ``--cv_scheme`` (and ``--seed`` for the
random scheme), and different ``--cv_fold``; anything else is one error line naming the runs.
Each model is rebuilt from its checkpoint's flags as ``main.py --evaluate_only`` does
(:func:`parameters._evaluate_namespace`), without downloading pretrained weights (the checkpoint
holds them all).

Fidelity to powerful-benchmarker (branch ``metric-learning``): ``ensembles/concatenate_embeddings.py``
normalises each model's embedding before joining them and ``configs/config_eval/default.yaml`` has
the tester normalise what it evaluates, so the joined vector is rescaled to unit length, as here
(for ``_normalize`` backbones the per-model normalisation changes nothing). Deviation: that tester
normalises a single model's embedding too; here a fold alone is evaluated as its run evaluated it
(the model's output), so the separated numbers are the runs' own test metrics at their selected
epoch. The metrics use this command's ``--seed`` (k-means) and evaluation flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import architectures
import datasets
import metrics
import parameters
from evaluation import embed, query_gallery_masks
from evaluation.options import metrics_for, search_options
from utilities.checkpoint import load_weights
from utilities.errors import ConfigError
from utilities.seeding import resolve_device
from utilities.training import make_loader

log = logging.getLogger("evaluation")


@dataclass
class FoldRun:
    """One fold's run folder: its flags (as ``--evaluate_only`` rebuilds them), its selected
    checkpoint and its ``summary.json``."""

    folder: Path
    opt: argparse.Namespace
    state: dict[str, Any]
    summary: dict[str, Any]

    @property
    def fold(self) -> int:
        return int(self.opt.cv_fold)

    @property
    def test_hash(self) -> str | None:
        return ((self.summary.get("splits") or {}).get("testing") or {}).get("hash")


def load_run(folder: str | Path, source_path: str | None = None) -> FoldRun:
    """The finished run in ``folder``: flags and weights of its ``checkpoint_best.pt``."""
    folder = Path(folder)
    if not (folder / "args.json").is_file():
        raise ConfigError(f"--ensemble {folder}: not a run folder (no args.json in it)")
    best = folder / "checkpoint_best.pt"
    if not best.is_file():
        raise ConfigError(f"--ensemble {folder}: no checkpoint_best.pt (no epoch was selected)")
    if not (folder / "summary.json").is_file():
        raise ConfigError(f"--ensemble {folder}: unfinished run (no summary.json); finish it with --resume")
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--ensemble: cannot read {folder / 'summary.json'}: {err}") from None
    # the checkpoint holds every weight: no download, no --pretrained_path file needed here
    argv = ["--evaluate_only", "--checkpoint", str(best), "--not_pretrained", "--pretrained_path", ""]
    if source_path is not None:
        argv += ["--source_path", source_path]
    parser = parameters.build_parser()
    opt, state = parameters._evaluate_namespace(parser, argv, parser.parse_args(argv))
    return FoldRun(folder, opt, state, summary)


def check_folds(runs: list[FoldRun]) -> None:
    """The runs are different folds of one partition, evaluated on one test split."""
    if len(runs) < 2:
        raise ConfigError("--ensemble needs the run folders of at least two folds")
    first = runs[0]
    for run in runs:
        if run.opt.cv_folds <= 1:
            raise ConfigError(f"--ensemble {run.folder}: not a fold run (trained without --cv_folds K > 1)")

    def differ(what: str, value) -> None:
        values = {str(r.folder): value(r) for r in runs}
        if len(set(values.values())) > 1:
            shown = "; ".join(f"{folder}: {v}" for folder, v in values.items())
            raise ConfigError(f"--ensemble: the runs differ in {what} ({shown})")

    differ("--dataset", lambda r: r.opt.dataset)
    differ("the backbone of --arch", lambda r: _family(r.opt.arch))
    differ("their test split (class-split hash in summary.json)", lambda r: r.test_hash)
    differ(
        "the partition into folds (--cv_folds --cv_scheme, --seed for random folds)",
        lambda r: (r.opt.cv_folds, r.opt.cv_scheme, r.opt.seed if r.opt.cv_scheme == "random" else None),
    )
    seen: dict[int, Path] = {}
    for run in runs:
        if run.fold in seen:
            raise ConfigError(
                f"--ensemble: {seen[run.fold]} and {run.folder} are the same fold (--cv_fold {run.fold}); "
                f"an ensemble joins different folds"
            )
        seen[run.fold] = run.folder
    if len(runs) < first.opt.cv_folds:
        log.warning(f"--ensemble: {len(runs)} of the {first.opt.cv_folds} folds (folds {sorted(seen)})")


def _family(arch: str) -> str:
    spec = architectures.parse_arch(arch)
    return f"{spec.backbone}:{spec.model}" if spec.model else spec.backbone


def concatenate(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble embedding: each model's rows L2-normalised, joined, rescaled to unit length."""
    parts = [torch.nn.functional.normalize(e.float(), dim=1) for e in embeddings]
    return torch.cat(parts, dim=1) / math.sqrt(len(parts))


def default_json(folders: list[str]) -> Path:
    """``<group>_ensemble.json`` next to the runs (``<group>`` their names without ``_f<i>``)."""
    stems = {re.sub(r"_f\d+(?=_|$)", "", Path(f).name) for f in folders}
    name = stems.pop() if len(stems) == 1 else "folds"
    return Path(folders[0]).parent / f"{name}_ensemble.json"


def evaluate(opt: argparse.Namespace) -> dict[str, Any]:
    """Embed the test split with every fold's selected model; the metrics of the concatenation
    and of each fold alone (with their mean and std). Returns the JSON payload."""
    if opt.show_retrievals:
        raise ConfigError("--show_retrievals draws the rows of an --embeddings file, not of an --ensemble")
    runs = [load_run(folder, opt.source_path) for folder in opt.ensemble]
    check_folds(runs)
    first = runs[0].opt
    names = opt.evaluation_metrics or metrics_for(datasets.recall_at(first.dataset))
    try:
        metrics.check_faiss_request(names, opt.eval_backend, opt.eval_index)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    device = resolve_device(opt.device, opt.gpu)
    configs = {str(r.folder): architectures.input_config(r.opt.arch) for r in runs}
    if len(set(configs.values())) > 1:  # one test loader serves every model
        raise ConfigError(f"--ensemble: the backbones expect different inputs ({configs})")

    start = time.perf_counter()
    test = datasets.select(first.dataset, first, architectures.input_config(first.arch))["testing"]
    here = datasets.split_summary({"testing": test})["testing"]
    if runs[0].test_hash is not None and here["hash"] != runs[0].test_hash:
        raise ConfigError(
            f"--ensemble: the test split read here ({first.source_path}, hash {here['hash']}) is not the one "
            f"the runs were tested on (hash {runs[0].test_hash}); point --source_path at that dataset"
        )
    loader = make_loader(test, first)
    embeddings, labels = [], None
    for run in runs:
        model = architectures.select(run.opt.arch, run.opt)
        source = f"{run.folder / 'checkpoint_best.pt'} (--arch {run.opt.arch})"
        load_weights(model, run.state["model"], source)
        emb, labels = embed(model.to(device), loader, device)
        embeddings.append(emb.cpu())
        del model
    t_embed = time.perf_counter() - start

    is_query, is_gallery = query_gallery_masks(test)

    def compute(emb: torch.Tensor) -> dict[str, Any]:
        return metrics.compute(
            names,
            emb,
            labels,
            query_mask=is_query,
            gallery_mask=is_gallery,
            seed=opt.seed,
            device=device,
            **search_options(opt),
        )

    per_fold = [compute(e) for e in embeddings]
    joined = concatenate(embeddings)
    concatenated = compute(joined)
    scalars = [n for n in concatenated if not metrics.is_array(concatenated[n])]
    mean = {n: statistics.fmean(r[n] for r in per_fold) for n in scalars}
    std = {n: statistics.stdev(r[n] for r in per_fold) for n in scalars}
    payload = {
        "runs": [str(r.folder) for r in runs],
        "folds": [r.fold for r in runs],
        "cv_folds": first.cv_folds,
        "cv_scheme": first.cv_scheme,
        "dataset": first.dataset,
        "selected_epochs": [r.summary.get("selected_epoch") for r in runs],
        "test_split": here,
        "metrics": names,
        "seed": opt.seed,
        "concatenated": {"dim": int(joined.shape[1]), "metrics": concatenated},
        "separated": {
            "dims": [int(e.shape[1]) for e in embeddings],
            "mean": mean,
            "std": std,
            "per_fold": per_fold,
        },
        "timings": {"embed": t_embed, "total": time.perf_counter() - start},
    }
    log_table(payload, scalars)
    return payload


def log_table(payload: dict[str, Any], scalars: list[str]) -> None:
    """The two numbers of every scalar metric, then each fold's."""
    sep = payload["separated"]
    folds = [f"fold {f}" for f in payload["folds"]]
    log.info(
        f"ensemble of {len(folds)} folds of {payload['dataset']} ({payload['cv_scheme']}, K = "
        f"{payload['cv_folds']}); test split: {payload['test_split']['images']} images, "
        f"{payload['test_split']['classes']} classes"
    )
    header = [f"concatenated {payload['concatenated']['dim']}-d", "separated mean ± std", *folds]
    width = max(len(n) for n in scalars)
    cells = [
        [
            f"{payload['concatenated']['metrics'][n]:.4f}",
            f"{sep['mean'][n]:.4f} ± {sep['std'][n]:.4f}",
            *(f"{r[n]:.4f}" for r in sep["per_fold"]),
        ]
        for n in scalars
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    log.info(f"{'':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for n, row in zip(scalars, cells, strict=True):
        log.info(f"{n:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)))
