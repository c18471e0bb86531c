"""Train and evaluate one deep-metric-learning run (flags: ``python main.py --help``).

parse -> seed -> data -> sampler -> model -> miner -> criterion -> optimiser -> logger ->
for each epoch: train, evaluate (test; validation; train unless --no_train_metrics), log,
checkpoint -> summary.json. Configuration errors end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# MKL may otherwise use fewer BLAS threads on a loaded machine, which changes float summation order
# and breaks bit-exact reproduction and resume. Must be set before torch is imported.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import torch

import architectures
import batch_mining
import criteria
import datasampler
import datasets
from evaluation import check_options, eval_options, evaluate_split, format_results, should_evaluate
from evaluation.selection import improved, selection_split
from utilities import checkpoint, run_state
from utilities.errors import ConfigError
from utilities.logger import RunLogger, public_args
from utilities.seeding import resolve_device, seed_everything
from utilities.training import build_optimizer, build_scheduler, make_loader, train_one_epoch


def main(argv: list[str] | None = None) -> dict:
    opt, state = run_state.parse(argv)  # --resume / --evaluate_only: the stored run's flags + checkpoint
    wall_start = time.time()
    seed_everything(opt.seed)
    device = resolve_device(opt.device, opt.gpu)
    metric_device = device if opt.evaluate_on_gpu else torch.device("cpu")
    check_options(opt, metric_device)

    # ---- data ---------------------------------------------------------------------------------
    splits = datasets.select(opt.dataset, opt)
    opt.n_classes = splits["training"].n_classes
    sampler = datasampler.select(opt.data_sampler, opt, splits["training"].labels)
    train_loader = make_loader(splits["training"], opt, batch_sampler=sampler, seed=opt.seed)
    eval_names = ["testing", "validation"] + ([] if opt.no_train_metrics else ["evaluation"])
    eval_loaders = {s: make_loader(splits[s], opt) for s in eval_names if s in splits}

    # ---- miner, loss (before the model: a bad combination fails before any weight download) ------
    batchminer = batch_mining.select(opt.batch_mining, opt) if criteria.requires_miner(opt.loss) else None
    criterion = criteria.select(opt.loss, opt, batchminer).to(device)

    # ---- model, optimiser -----------------------------------------------------------------------
    model = architectures.select(opt.arch, opt).to(device)
    if opt.evaluate_only:
        return run_state.evaluate_checkpoint(model, state, eval_loaders, opt, device, metric_device)
    optimizer = build_optimizer(model, criterion, opt)
    scheduler = build_scheduler(optimizer, opt)
    if getattr(sampler, "requires_storage", False):
        sampler.init_storage(lambda: _embed_training_set(model, splits["evaluation"], opt, device))

    logger = RunLogger(opt, Path(opt.resume) if opt.resume else None, resume=bool(opt.resume))
    select_on = selection_split(list(eval_loaders))
    select_metric = opt.storage_metrics[0]
    print(f"Run folder: {logger.folder}")
    print(
        f"{opt.dataset}: {len(splits['training'])} training images, {opt.n_classes} classes | "
        f"loss {opt.loss} | miner {opt.batch_mining if batchminer else '-'} | arch {opt.arch} | "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters | {device}"
    )

    # ---- train ------------------------------------------------------------------------------------
    history: dict[str, list[dict]] = {s: [] for s in eval_loaders}
    best_epoch, start_epoch, wall_before = None, 0, 0.0
    parts = {
        "model": model,
        "criterion": criterion,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "sampler": sampler,
        "batchminer": batchminer,
        "train_loader": train_loader,
    }
    if state is not None:  # --resume: continue after the last completed epoch (see utilities/run_state)
        run_state.restore_training_state(state, **parts)
        history, best_epoch, wall_before = state["history"], state["best_epoch"], state["wall_time"]
        start_epoch = state["epoch"] + 1
        logger.restore(state["rows"])
        print(f"Resumed after epoch {state['epoch']}")
    for epoch in range(start_epoch, opt.n_epochs):
        stats = train_one_epoch(
            model,
            criterion,
            run_state.train_iterable(train_loader, epoch),
            optimizer,
            device,
            epoch=epoch,
            batchminer=batchminer,
            sampler=sampler,
            progress=not opt.no_progress,
        )
        logger.log(epoch, "training", stats)
        line = [f"Epoch {epoch}: loss {stats['loss']:.4f} ({stats['train_time']:.1f}s)"]
        for split, loader in eval_loaders.items():
            if not should_evaluate(split, epoch, opt):  # --train_eval_every: None keeps history per epoch
                history[split].append(None)
                continue
            results = evaluate_split(
                model,
                loader,
                opt.evaluation_metrics,
                device,
                seed=opt.seed,
                metric_device=metric_device,
                **eval_options(opt, split, logger.folder, epoch),
            )
            history[split].append(results)
            logger.log(epoch, split, results)
            line.append(f"{split}: " + format_results(results, opt.evaluation_metrics))
        print(" | ".join(line))
        scheduler.step()
        run_state.kill_point(f"logged:{epoch}")

        scores = [r.get(select_metric) for r in history[select_on]]
        if improved(scores[:-1], scores[-1]):
            best_epoch = epoch
        state = run_state.training_state(
            epoch=epoch,
            **parts,
            rows=logger.rows,
            history=history,
            best_epoch=best_epoch,
            wall_time=wall_before + time.time() - wall_start,
            args=public_args(opt),
        )
        if best_epoch == epoch:  # best before last: a crash in between redoes this epoch and rewrites both
            checkpoint.save_atomic(state, logger.folder / "checkpoint_best.pt")
        checkpoint.save_atomic(state, logger.folder / "checkpoint_last.pt")
        run_state.kill_point(f"saved:{epoch}")

    # ---- summary ----------------------------------------------------------------------------------
    summary = {
        "selected_epoch": best_epoch,
        "selection_split": select_on,
        "selection_metric": select_metric,
        "selected_on_test_split": select_on == "testing",
        "note": (
            "epoch selected on the TEST split (no --use_tv_split): test metrics are optimistic"
            if select_on == "testing"
            else "epoch selected on the validation split"
        ),
        "metrics": {s: h[best_epoch] if best_epoch is not None else None for s, h in history.items()},
        "wall_time": wall_before + time.time() - wall_start,
        "n_epochs": opt.n_epochs,
    }
    logger.summary(summary)
    if best_epoch is not None:
        best = summary["metrics"]["testing"]
        print(
            f"Selected epoch {best_epoch} on {select_on} {select_metric}; testing: "
            + format_results(best, opt.evaluation_metrics)
        )
    return summary


def _embed_training_set(model, dataset, opt, device):
    from evaluation import embed

    return embed(model, make_loader(dataset, opt), device)[0]


def cli() -> None:
    try:
        main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
