"""Embed a split and compute its metrics.

``embed`` collects the embeddings of a split into one preallocated tensor (no Python lists);
``evaluate_split`` runs :func:`metrics.compute` on them (query/gallery protocol when the split
carries ``is_query`` / ``is_gallery`` masks, leave-one-out otherwise), optionally saves them as
``.npz`` (readable by ``python -m evaluation --embeddings FILE.npz``) and reports the time taken.
Which epoch is "best" is decided in :mod:`evaluation.selection`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import metrics
from evaluation.console import format_short, shown_metrics
from evaluation.options import search_options
from evaluation.retrievals import row_paths
from metrics.ranking import check_backend
from utilities import distributed
from utilities.checkpoint import load_weights
from utilities.errors import ConfigError
from utilities.logger import RunLogger, writing
from utilities.progress import Progress
from utilities.resources import compute_summary, peak_memory

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    dist: distributed.Context = distributed.SINGLE,
    *,
    progress: Progress | None = None,
    stage: str = "embedding",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 embeddings and (N,) labels of every item of ``loader``'s dataset, in order.

    Under torchrun each rank's loader covers its shard (``make_loader(..., dist=)``); the shards
    are gathered so that every rank returns the whole split in dataset order. ``progress``: the
    run's bar, advanced per batch as ``stage``."""
    was_training = model.training
    model.eval()
    n = len(loader.dataset)
    embeddings: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    for images, batch_labels, idx in progress.track(loader, stage) if progress else loader:
        out = model(images.to(device, non_blocking=True)).float()
        if embeddings is None:
            embeddings = torch.empty(n, out.shape[1], dtype=torch.float32, device=out.device)
        embeddings[idx.to(out.device)] = out
        labels[idx] = batch_labels
    model.train(was_training)
    if dist.active:  # a rank whose shard is empty learns the width from the others
        dims = distributed.all_gather_object(None if embeddings is None else embeddings.shape[1], dist)
        dim = next((d for d in dims if d is not None), None)
        if embeddings is None and dim is not None:
            embeddings = torch.empty(n, dim, dtype=torch.float32, device=device)
        if embeddings is not None:
            embeddings = distributed.gather_shards(embeddings, dist)
            labels = distributed.gather_shards(labels.to(embeddings.device), dist).cpu()
    if embeddings is None:
        raise ValueError("cannot evaluate an empty split")
    return embeddings, labels


def query_gallery_masks(dataset) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The split's ``is_query`` / ``is_gallery`` masks (``None``: leave-one-out)."""
    return getattr(dataset, "is_query", None), getattr(dataset, "is_gallery", None)


def save_embeddings(path: str | Path, embeddings: torch.Tensor, labels: torch.Tensor, **extra) -> Path:
    """Write ``embeddings`` (N, D), ``labels`` (N,) and optional arrays as ``.npz`` (None values are
    left out). :func:`evaluate_split` adds ``is_query`` / ``is_gallery`` masks, ``epoch``, ``paths``
    (each row's image path as the dataset lists it, ``digits:<i>`` for the embedded dataset; see
    :mod:`evaluation.retrievals`), ``dataset`` and ``split`` (names)."""
    path = Path(path)
    arrays = {
        "embeddings": embeddings.detach().cpu().numpy().astype(np.float32),
        "labels": labels.detach().cpu().numpy().astype(np.int64),
    }
    for key, value in extra.items():
        if value is not None:
            arrays[key] = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    tmp = path.with_name(path.name + ".tmp.npz")
    with writing(path):  # a full disk is one line naming the file, not a numpy traceback
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return path


def evaluate_split(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    metric_names: list[str],
    device: torch.device,
    *,
    seed: int = 0,
    metric_device: torch.device | str = "cpu",
    save_to: str | Path | None = None,
    epoch: int | None = None,
    dist: distributed.Context = distributed.SINGLE,
    dataset: str | None = None,
    progress: Progress | None = None,
    **search: Any,
) -> dict[str, float | list[float]] | None:
    """All ``metric_names`` on one split, plus ``eval_time`` (seconds, embedding included; a CSV
    column), ``eval_images_per_s`` (the split's images over ``eval_time``; a CSV column) and
    ``eval_time_stages`` (a dict of seconds per stage: embed, ranking, kmeans, svd, ...; kept out
    of the CSV, which holds scalars, but stored in the run's history and summary). ``search``: the
    retrieval options of :func:`metrics.compute` (backend, chunk, faiss index, k-means).
    ``dataset``: the dataset's name, stored in the saved ``.npz`` with each row's image path.
    ``progress``: the run's bar (embedding batches, then metrics).

    Under torchrun every rank embeds its shard, and rank 0 alone computes the metrics (and saves
    the embeddings); the other ranks return None."""
    name = getattr(loader.dataset, "name", None) or "split"  # for the progress bar
    start = time.perf_counter()
    embeddings, labels = embed(model, loader, device, dist, progress=progress, stage=f"{name} embedding")
    t_embed = time.perf_counter() - start
    if not dist.is_main:
        return None
    is_query, is_gallery = query_gallery_masks(loader.dataset)
    if save_to is not None:
        save_embeddings(
            save_to,
            embeddings,
            labels,
            is_query=is_query,
            is_gallery=is_gallery,
            epoch=np.int64(-1 if epoch is None else epoch),
            paths=row_paths(loader.dataset, dataset),
            dataset=dataset,
            split=getattr(loader.dataset, "name", None) or None,
        )
    timings: dict[str, float] = {}
    results = metrics.compute(
        metric_names,
        embeddings,
        labels,
        query_mask=is_query,
        gallery_mask=is_gallery,
        seed=seed,
        device=metric_device,
        timings=timings,
        progress=progress.steps(f"{name} metrics", len(set(metric_names))) if progress else None,
        **search,
    )
    results["eval_time"] = time.perf_counter() - start
    results["eval_images_per_s"] = len(labels) / results["eval_time"]
    results["eval_time_stages"] = {"embed": t_embed, **timings}
    return results


def format_results(results: dict, names: list[str]) -> str:
    """``"e_recall@1 0.8123, ..."`` for the scalar metrics among ``names`` (arrays are skipped), and
    an approximate search's ``search_recall@k`` against exact search, which a table must not hide."""
    shown = [*names, *(k for k in results if k.startswith("search_recall@"))]
    return ", ".join(
        f"{k} {results[k]:.4f}" for k in shown if k in results and not metrics.is_array(results[k])
    )


def should_evaluate(split: str, epoch: int, opt) -> bool:
    """``--train_eval_every k``: the training split (``evaluation``) only every k-th epoch and at
    the last one; every other split every epoch."""
    every = max(1, opt.train_eval_every)
    return split != "evaluation" or (epoch + 1) % every == 0 or epoch == opt.n_epochs - 1


def evaluate_splits(
    model: nn.Module,
    loaders: dict[str, torch.utils.data.DataLoader],
    opt,
    device: torch.device,
    metric_device: torch.device,
    *,
    folder: Path,
    epoch: int,
    only: list[str] | None = None,
    dist: distributed.Context = distributed.SINGLE,
    progress: Progress | None = None,
) -> dict[str, dict | None]:
    """:func:`evaluate_split` with the evaluation flags on each split of ``loaders`` (those in
    ``only``, if given; the others map to None, which keeps a per-epoch history aligned). Under
    torchrun rank 0's results are broadcast, so every rank selects the same epoch. ``progress``:
    the run's bar."""
    results = {
        split: evaluate_split(
            model,
            loader,
            opt.evaluation_metrics,
            device,
            seed=opt.seed,
            metric_device=metric_device,
            dist=dist,
            progress=progress,
            **eval_options(opt, split, folder, epoch),
        )
        if only is None or split in only
        else None
        for split, loader in loaders.items()
    }
    return distributed.broadcast_object(results, dist)


def check_options(opt, metric_device: torch.device) -> None:
    """Before training, so a bad combination never costs a finished epoch: ``--eval_backend``
    must run where the metrics are computed (numba is CPU only), and the selection metric (the
    first ``--storage_metrics``; the others break its ties) must be scalars that
    ``--evaluation_metrics`` computes."""
    try:
        check_backend(opt.eval_backend, metric_device)
    except ValueError as err:
        raise ConfigError(
            f"--eval_backend {opt.eval_backend} with metrics on {metric_device}: {err}"
        ) from None
    for key in opt.storage_metrics:  # the first selects; the others break its ties
        if key not in opt.evaluation_metrics:
            raise ConfigError(
                f"--storage_metrics {key}: the selection metric must be one of --evaluation_metrics "
                f"({' '.join(opt.evaluation_metrics)})"
            )
        if metrics.returns_array(key):
            raise ConfigError(f"--storage_metrics {key}: an array metric cannot select an epoch")
    try:
        metrics.check_faiss_request(opt.evaluation_metrics, opt.eval_backend, opt.eval_index)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def eval_options(opt, split: str, folder: Path, epoch: int) -> dict:
    """The keyword arguments of :func:`evaluate_split` that come from the evaluation flags."""
    return {
        **search_options(opt),
        "save_to": Path(folder) / f"embeddings_{split}.npz" if opt.save_embeddings else None,
        "epoch": epoch,
        "dataset": opt.dataset,
    }


def evaluate_checkpoint(
    model: nn.Module,
    state: dict[str, Any],
    loaders: dict[str, torch.utils.data.DataLoader],
    opt,
    device: torch.device,
    metric_device: torch.device,
    logger: RunLogger | Callable[[], RunLogger],
    dist: distributed.Context = distributed.SINGLE,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``main.py --evaluate_only``: the checkpoint's weights, every split evaluated once, and a run
    folder (args.json, metrics.csv at the checkpoint's epoch, summary.json) like a training run's.

    Weights that do not fit the model (another ``--arch`` or ``--embed_dim``) are a one-line
    ConfigError naming the first mismatching tensor, and leave no run folder: ``logger`` may be a
    factory called once the weights are in, or a fresh RunLogger, whose folder is then removed.
    The console gets one short line per split (:mod:`evaluation.console`); ``progress``: a bar."""
    start = time.time()
    try:
        load_weights(
            model,
            state["model"],
            f"--checkpoint {opt.checkpoint} (--arch {opt.arch} --embed_dim {opt.embed_dim})",
        )
    except ConfigError:
        if not callable(logger):
            logger.discard()
        raise
    if callable(logger):
        logger = logger()
    folder = distributed.broadcast_object(logger.folder, dist)  # rank 0's run folder
    epoch = int(state["epoch"])
    results = evaluate_splits(
        model, loaders, opt, device, metric_device, folder=folder, epoch=epoch, dist=dist, progress=progress
    )
    shown = shown_metrics(opt.console_metrics, opt.evaluation_metrics)
    for split, res in results.items():
        logger.log(epoch, split, res)
        log.info(f"{split}: " + format_short(res, shown))
    wall_time = time.time() - start
    summary = {
        "evaluate_only": True,
        "checkpoint": str(opt.checkpoint),
        "selected_epoch": epoch,
        "selection_split": None,
        "metrics": results,
        "wall_time": wall_time,
        "compute": compute_summary(logger.rows, peak_memory(device, dist), wall_time),
    }
    if progress is not None:
        progress.close()
    logger.summary(summary)
    log.info(f"Evaluated {opt.checkpoint} (epoch {epoch}); results in {logger.folder}")
    return summary
