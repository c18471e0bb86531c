"""Embed a split and compute its metrics.

``embed`` collects the embeddings of a split into one preallocated tensor (no Python lists);
``evaluate_split`` runs :func:`metrics.compute` on them (query/gallery protocol when the split
carries ``is_query`` / ``is_gallery`` masks, leave-one-out otherwise), optionally saves them as
``.npz`` (readable by ``python -m evaluation --embeddings FILE.npz``) and reports the time taken.
Which epoch is "best" is decided in :mod:`evaluation.selection`.
"""

from __future__ import annotations

import logging
import shutil
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
from metrics import scores
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
    with_params: bool = False,
    progress: Progress | None = None,
    stage: str = "embedding",
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, D) float32 embeddings and (N,) labels of every item of ``loader``'s dataset, in order;
    ``with_params``: also the (N, P) float32 distribution parameters.

    A model with ``infer`` (architectures.EmbeddingNet) gives its mean, what retrieval ranks (a
    probabilistic model's ``forward`` packs the parameters after it), and its parameters: the
    embedding's norm before normalisation (dirac), log σ² (gaussian) or log κ (vmf). Any other
    module is taken as a dirac embedding: its output, whose norm stands in for the parameter.
    Under torchrun each rank's loader covers its shard (``make_loader(..., dist=)``); the shards
    are gathered so that every rank returns the whole split in dataset order. ``progress``: the
    run's bar, advanced per batch as ``stage``."""
    was_training = model.training
    model.eval()
    infer = getattr(model, "infer", None)
    n = len(loader.dataset)
    arrays: list[torch.Tensor] | None = None  # embeddings, then params
    labels = torch.empty(n, dtype=torch.long)
    for images, batch_labels, idx in progress.track(loader, stage) if progress else loader:
        x = images.to(device, non_blocking=True)
        if infer is not None:
            mean, params = infer(x)
        else:
            mean = model(x)
            params = mean.float().norm(dim=1, keepdim=True)
        outs = (mean, params) if with_params else (mean,)
        if arrays is None:
            arrays = [torch.empty(n, o.shape[1], dtype=torch.float32, device=o.device) for o in outs]
        for array, out in zip(arrays, outs, strict=True):
            array[idx.to(out.device)] = out.float()
        labels[idx] = batch_labels
    model.train(was_training)
    if dist.active:  # a rank whose shard is empty learns the widths from the others
        widths = distributed.all_gather_object(None if arrays is None else [a.shape[1] for a in arrays], dist)
        known = next((w for w in widths if w is not None), None)
        if arrays is None and known is not None:
            arrays = [torch.empty(n, w, dtype=torch.float32, device=device) for w in known]
        if arrays is not None:
            arrays = [distributed.gather_shards(a, dist) for a in arrays]
            labels = distributed.gather_shards(labels.to(arrays[0].device), dist).cpu()
    if arrays is None:
        raise ValueError("cannot evaluate an empty split")
    return (arrays[0], labels, arrays[1]) if with_params else (arrays[0], labels)


def query_gallery_masks(dataset) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The split's ``is_query`` / ``is_gallery`` masks (``None``: leave-one-out)."""
    return getattr(dataset, "is_query", None), getattr(dataset, "is_gallery", None)


def save_embeddings(path: str | Path, embeddings: torch.Tensor, labels: torch.Tensor, **extra) -> Path:
    """Write ``embeddings`` (N, D), ``labels`` (N,) and optional arrays as ``.npz`` (None values are
    left out). :func:`evaluate_split` adds ``is_query`` / ``is_gallery`` masks, ``epoch``, ``paths``
    (each row's image path as the dataset lists it, ``digits:<i>`` for the embedded dataset; see
    :mod:`evaluation.retrievals`), ``dataset`` and ``split`` (names), ``params`` (N, P: the
    distribution parameters), ``confidence`` (N,) and ``distribution`` (its name)."""
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


def keep_selected_embeddings(folder: str | Path, splits: list[str]) -> list[Path]:
    """Copy each ``embeddings_<split>.npz`` of ``splits`` (just written for the epoch that became
    the selected one) to ``embeddings_<split>_selected.npz``: the per-epoch file is overwritten at
    every evaluation, the copy keeps the selected epoch's embeddings (``Result_Evaluations.py
    --query_bootstrap`` resamples them). Atomic, like the per-epoch file; returns the copies."""
    kept = []
    for split in splits:
        source = Path(folder) / f"embeddings_{split}.npz"
        if not source.is_file():
            continue
        target = source.with_name(f"embeddings_{split}_selected.npz")
        tmp = target.with_name(target.name + ".tmp")
        with writing(target):
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        kept.append(target)
    return kept


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
    distribution: str = "dirac",
    **search: Any,
) -> dict[str, float | list[float]] | None:
    """All ``metric_names`` on one split, plus ``eval_time`` (seconds, embedding included; a CSV
    column), ``eval_images_per_s`` (the split's images over ``eval_time``; a CSV column) and
    ``eval_time_stages`` (a dict of seconds per stage: embed, ranking, kmeans, svd, ...; kept out
    of the CSV, which holds scalars, but stored in the run's history and summary). ``search``: the
    retrieval options of :func:`metrics.compute` (backend, chunk, faiss index, k-means).
    ``dataset``: the dataset's name, stored in the saved ``.npz`` with each row's image path.
    ``progress``: the run's bar (embedding batches, then metrics). ``distribution``: the model's
    ``--embedding_distribution``; its parameters (:func:`embed` ``with_params``) give the metrics
    each sample's confidence (the uncertainty metrics) and, with ``search["score"]``, the ranking
    score of the retrieval metrics (:mod:`metrics.scores`); the ``.npz`` holds them as ``params``
    and ``confidence``.

    Under torchrun every rank embeds its shard, and rank 0 alone computes the metrics (and saves
    the embeddings); the other ranks return None."""
    name = getattr(loader.dataset, "name", None) or "split"  # for the progress bar
    start = time.perf_counter()
    embeddings, labels, params = embed(
        model, loader, device, dist, with_params=True, progress=progress, stage=f"{name} embedding"
    )
    t_embed = time.perf_counter() - start
    if not dist.is_main:
        return None
    is_query, is_gallery = query_gallery_masks(loader.dataset)
    try:
        confidence = scores.confidence(params, distribution)
    except ValueError as err:
        raise ConfigError(f"--embedding_distribution {distribution}: {err}") from None
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
            params=params,
            confidence=confidence,
            distribution=distribution,
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
        confidence=confidence,
        params=params,
        distribution=distribution,
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
    ``--evaluation_metrics`` computes; ``--retrieval_score`` must fit ``--embedding_distribution``
    and the backend."""
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
        scores.check_score(opt.retrieval_score, opt.embedding_distribution, opt.eval_backend)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def eval_options(opt, split: str, folder: Path, epoch: int) -> dict:
    """The keyword arguments of :func:`evaluate_split` that come from the evaluation flags."""
    return {
        **search_options(opt),
        "save_to": Path(folder) / f"embeddings_{split}.npz" if opt.save_embeddings else None,
        "epoch": epoch,
        "dataset": opt.dataset,
        "distribution": opt.embedding_distribution,
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
