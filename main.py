"""Train and evaluate one deep-metric-learning run (flags: ``python main.py --help``).

parse -> processes -> seed -> data -> sampler -> miner -> criterion -> model -> run card (what the
run is comparable on, utilities/run_card.py) -> optimiser -> logger -> for each epoch: train,
evaluate (test; validation; train unless --no_train_metrics), log, checkpoint -> summary.json.
Configuration errors end with one line on stderr and exit code 2.
The console gets one short line per epoch (evaluation/console.py; every metric goes to the run
folder) and, on a terminal, one progress bar with the run's ETA (utilities/progress.py).

``torchrun --nproc_per_node N main.py ...`` runs the same experiment on N processes (see
utilities/distributed.py): the same global ``--bs`` batches, losses on the gathered batch, summed
gradients, sharded evaluation; rank 0 is the one writer of the run folder.

``main(argv, on_epoch=hook)`` (tune.py) calls ``hook(epoch, results, run_folder)`` after each
epoch's checkpoint is written (``results``: split -> metrics, None for a split not evaluated that
epoch); a hook that raises :class:`RunStopped` ends the run there as if it had finished (a pruned
trial): summary.json covers the epochs run and records ``stopped``. Single-process runs only.
"""

from __future__ import annotations

import os

# MKL may otherwise use fewer BLAS threads on a loaded machine, which changes float summation order
# and breaks bit-exact reproduction and resume. Must be set before torch is imported.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
# Waiting OpenMP threads sleep instead of spinning on cores other processes share: on a loaded
# machine a spinning barrier cost a CUB-scale evaluation 5-10x (metrics/_threads.py). Numerics
# are unchanged; only idle threads behave differently.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

import architectures
import batch_mining
import criteria
import datasampler
import datasets
import parameters
from evaluation import (
    check_options,
    embed,
    evaluate_checkpoint,
    evaluate_splits,
    keep_selected_embeddings,
    should_evaluate,
)
from evaluation.console import epoch_line, selected_line, shown_metrics
from evaluation.selection import improved, selection_key, selection_split, summary
from utilities import checkpoint, distributed, resources, run_card
from utilities.cli import announce_run, run_entry_point, setup_logging
from utilities.faults import kill_point, train_iterable
from utilities.logger import RunLogger, SilentLogger, public_args
from utilities.progress import Progress
from utilities.seeding import GeneratorState, GlobalRNG, resolve_device, seed_everything
from utilities.training import build_optimizer, build_scheduler, make_loader, train_one_epoch

log = logging.getLogger("main")

EpochHook = Callable[[int, dict[str, dict | None], Path], None]


class RunStopped(Exception):
    """Raised by an ``on_epoch`` hook to end the run after the current epoch; its message becomes
    summary.json's ``stopped.reason``."""


def main(argv: list[str] | None = None, *, on_epoch: EpochHook | None = None) -> dict:
    setup_logging()
    opt, state = parameters.parse_run(argv)  # --resume / --evaluate_only: stored flags + checkpoint
    wall_start = time.time()

    # ---- processes (torchrun; a plain ``python main.py`` is one process and skips all of this) ----
    dist = distributed.environment()
    if not opt.evaluate_only:  # evaluation splits any split size over the ranks
        distributed.check_batch(opt.bs, dist)
    device = distributed.device_for(dist, opt.device, opt.gpu) or resolve_device(opt.device, opt.gpu)
    distributed.check_sync_bn(opt.sync_bn, dist, device)
    dist = distributed.init(dist, device, opt.dist_backend, opt.dist_timeout)
    opt.world_size, opt.process_group = dist.world_size, dist.backend  # recorded in args.json
    distributed.check_same_flags(public_args(opt), dist)
    if not dist.is_main:
        setup_logging(logging.WARNING)  # rank 0 reports the run
    seed_everything(opt.seed)
    metric_device = device if opt.evaluate_on_gpu else torch.device("cpu")
    check_options(opt, metric_device)
    architectures.check_pretrained_path(opt.arch, opt.pretrained_path)

    # ---- data ---------------------------------------------------------------------------------
    splits = datasets.select(opt.dataset, opt, architectures.input_config(opt.arch))
    train_set, n_classes = splits["training"], splits["training"].n_classes
    split_info = datasets.split_summary(splits)  # recorded in summary.json
    for name, info in split_info.items():
        log.info(f"{name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    sampler = datasampler.select(opt.data_sampler, opt, train_set.labels)
    train_loader = make_loader(train_set, opt, batch_sampler=sampler, seed=opt.seed, dist=dist)
    eval_names = ["testing", "validation"] + ([] if opt.no_train_metrics else ["evaluation"])
    eval_loaders = {s: make_loader(splits[s], opt, dist=dist) for s in eval_names if s in splits}

    # ---- miner, loss (before the model: a bad combination fails before any weight download) ------
    batchminer = batch_mining.select(opt.batch_mining, opt) if criteria.requires_miner(opt.loss) else None
    criterion = criteria.select(opt.loss, opt, n_classes=n_classes, batchminer=batchminer).to(device)
    distributed.broadcast_module(criterion, dist)  # e.g. randomly initialised proxies

    # ---- model, optimiser, state ----------------------------------------------------------------
    model = architectures.select(opt.arch, opt, freeze_mean=criteria.frozen_mean(opt.loss))  # PFE: σ only
    model = (distributed.convert_sync_bn(model, dist) if opt.sync_bn else model).to(device)
    card = run_card.build(  # what a table may compare this run on: args.json and summary.json record it
        public_args(opt),
        architecture=architectures.card_fields(opt.arch, not opt.not_pretrained, opt.pretrained_path),
        class_split=datasets.class_split_hash(splits),
        selection_split=selection_split(list(eval_loaders)),
    )
    new_logger = (lambda: RunLogger(opt, card=card)) if dist.is_main else SilentLogger
    progress = Progress.for_run(opt, dist)  # one bar on a terminal (rank 0), none otherwise
    if opt.evaluate_only:
        result = evaluate_checkpoint(
            model, state, eval_loaders, opt, device, metric_device, new_logger, dist, progress
        )
        distributed.shutdown(dist)
        return result
    optimizer = build_optimizer(model, criterion, opt)
    scheduler = build_scheduler(optimizer, opt)
    parts = {  # every stateful object of the run, each saved by itself; the process RNGs last
        "model": model,
        "criterion": criterion,  # holds the batch miner and its generators
        "optimizer": optimizer,
        "scheduler": scheduler,
        "sampler": sampler,
        "loader_generator": GeneratorState(train_loader.generator),
        "rng": distributed.PerRank(GlobalRNG(), dist),  # one state per rank
    }
    history: dict[str, list[dict | None]] = {s: [] for s in eval_loaders}
    best_epoch, start_epoch, wall_before, peak_memory = None, 0, 0.0, None
    if state is not None:  # --resume: continue after the last completed epoch
        checkpoint.restore(state, parts, source=Path(opt.resume) / "checkpoint_last.pt")
        history, best_epoch, wall_before = state["history"], state["best_epoch"], state["wall_time"]
        start_epoch, peak_memory = state["epoch"] + 1, state.get("peak_memory")
    train_model = distributed.wrap_model(model, dist, device)  # DDP (summed gradients) under torchrun
    if dist.active and not opt.sync_bn and distributed.batchnorm_in_train_mode(model):
        log.warning(
            f"{opt.arch}: BatchNorm in train mode normalises each rank's slice of {opt.bs // dist.world_size} "
            "with its own statistics (the single-process run uses the whole batch); use a _frozen "
            "backbone or --sync_bn (CUDA) for the same training"
        )
    sampler.init_storage(
        lambda: embed(model, make_loader(splits["evaluation"], opt, dist=dist), device, dist)[0]
    )
    if dist.is_main:
        logger = RunLogger(opt, Path(opt.resume) if opt.resume else None, resume=bool(opt.resume), card=card)
    else:
        logger = SilentLogger()
    logger.folder = distributed.broadcast_object(logger.folder, dist)
    if state is not None:
        logger.restore(state["rows"])
        log.info(f"Resumed after epoch {state['epoch']}")
    select_on, select_metric = selection_split(list(eval_loaders)), opt.storage_metrics[0]
    shown = shown_metrics(opt.console_metrics, opt.evaluation_metrics, select_metric)  # on the console
    announce_run(logger.folder)  # Ctrl-C from here on says how to continue
    log.info(f"Run folder: {logger.folder}")
    log.info(
        f"{opt.dataset}: {len(train_set)} training images, {n_classes} classes | loss {opt.loss} | "
        f"miner {opt.batch_mining if batchminer else '-'} | arch {opt.arch} | "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters | {device}"
    )

    # ---- train ------------------------------------------------------------------------------------
    stopped = None
    for epoch in range(start_epoch, opt.n_epochs):
        progress.start_epoch(epoch)
        train_set.set_epoch(opt.seed, epoch)  # augmentation keyed on (seed, epoch, sample)
        stats = train_one_epoch(
            train_model,
            criterion,
            train_iterable(train_loader, epoch),
            optimizer,
            device,
            epoch=epoch,
            sampler=sampler,
            progress=progress,
            last_good=logger.folder / "checkpoint_last.pt",
            dist=dist,
        )
        logger.log(epoch, "training", stats)
        due = [s for s in eval_loaders if should_evaluate(s, epoch, opt)]
        results = evaluate_splits(
            model,
            eval_loaders,
            opt,
            device,
            metric_device,
            folder=logger.folder,
            epoch=epoch,
            only=due,
            dist=dist,
            progress=progress,
        )
        for split, res in results.items():
            history[split].append(res)  # None for a skipped split keeps the history per epoch
            if res is not None:
                logger.log(epoch, split, res)
        progress.end_epoch()
        log.info(epoch_line(epoch, stats, results, shown, eta=progress.eta()))
        scheduler.step()
        kill_point(f"logged:{epoch}")

        scores = [selection_key(r, opt.storage_metrics) for r in history[select_on]]
        if improved(scores[:-1], scores[-1]):
            best_epoch = epoch
        peak_memory = resources.peak_memory(device, dist, peak_memory)  # a collective under torchrun
        saved = checkpoint.gather(
            parts,
            epoch=epoch,
            rows=logger.rows,
            history=history,
            best_epoch=best_epoch,
            wall_time=wall_before + time.time() - wall_start,
            peak_memory=peak_memory,
            args=public_args(opt),
        )  # a collective under torchrun (every rank's RNG state); rank 0 writes
        if dist.is_main and best_epoch == epoch:  # best before last: a crash in between redoes this epoch
            checkpoint.save_atomic(saved, logger.folder / "checkpoint_best.pt")
            if opt.save_embeddings:  # what Result_Evaluations --query_bootstrap resamples
                keep_selected_embeddings(logger.folder, due)
        if dist.is_main:
            checkpoint.save_atomic(saved, logger.folder / "checkpoint_last.pt")
        kill_point(f"saved:{epoch}")
        if on_epoch is not None:  # after the checkpoint: a stop here leaves a complete run folder
            try:
                on_epoch(epoch, results, logger.folder)
            except RunStopped as stop:
                stopped = {"after_epoch": epoch, "reason": str(stop)}
                log.info(f"Stopped after epoch {epoch}: {stop}")
                break

    # ---- summary ----------------------------------------------------------------------------------
    progress.close()
    wall_time = wall_before + time.time() - wall_start
    result = summary(
        history,
        best_epoch,
        select_on,
        select_metric,
        wall_time=wall_time,
        n_epochs=opt.n_epochs,
        tie_breakers=opt.storage_metrics[1:],
    )
    result["splits"] = split_info
    if stopped is not None:
        result["stopped"] = stopped
    peak_memory = resources.peak_memory(device, dist, peak_memory)
    result["compute"] = resources.compute_summary(logger.rows, peak_memory, wall_time)  # images/s, memory
    logger.summary(result)
    if best_epoch is not None:
        log.info(selected_line(best_epoch, select_on, select_metric, result["metrics"]["testing"], shown))
    distributed.shutdown(dist)
    return result


def cli() -> None:
    run_entry_point(main)


if __name__ == "__main__":
    cli()
