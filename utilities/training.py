"""Optimiser, scheduler, data loaders and the one-epoch training step used by ``main.py``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utilities import distributed
from utilities.errors import ConfigError, TrainingDiverged
from utilities.progress import Progress
from utilities.resources import epoch_rate
from utilities.seeding import loader_generator, worker_init_fn


def build_optimizer(model: nn.Module, criterion: nn.Module, opt: argparse.Namespace) -> torch.optim.Optimizer:
    """Network parameters get ``--lr``/``--decay``; with ``--fc_lr >= 0`` the ``last_linear`` head
    gets its own learning rate (0 freezes it, as in the study). Learnable loss parameters come from
    ``criterion.param_groups()`` with their own learning rates and no weight decay."""
    head = [p for n, p in model.named_parameters() if "last_linear" in n and p.requires_grad]
    head_ids = {id(p) for p in head} if opt.fc_lr >= 0 else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups: list[dict[str, Any]] = [
        {"params": body, "lr": opt.lr, "weight_decay": opt.decay, "name": "network"}
    ]
    if head_ids:
        groups.append({"params": head, "lr": opt.fc_lr, "weight_decay": opt.decay, "name": "last_linear"})
    if hasattr(criterion, "param_groups"):
        groups += [g for g in criterion.param_groups() if g["params"]]
    if opt.optim == "adam":
        return torch.optim.Adam(groups)
    if opt.optim == "adamw":
        return torch.optim.AdamW(groups)
    if opt.optim == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    raise ConfigError(f"unknown --optim '{opt.optim}'; choose from: adam, adamw, sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, opt: argparse.Namespace):
    """``step``: MultiStepLR(milestones=--tau, gamma=--gamma), stepped once per epoch;
    ``cosine``: cosine decay over --n_epochs; ``none``: constant learning rates."""
    if opt.scheduler == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=opt.tau, gamma=opt.gamma)
    if opt.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, opt.n_epochs))
    if opt.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    raise ConfigError(f"unknown --scheduler '{opt.scheduler}'; choose from: step, cosine, none")


def make_loader(
    dataset,
    opt: argparse.Namespace,
    *,
    batch_sampler=None,
    seed: int = 0,
    dist: distributed.Context = distributed.SINGLE,
) -> torch.utils.data.DataLoader:
    """A seeded DataLoader: ``batch_sampler`` for training, sequential batches of ``--bs`` otherwise.

    Under torchrun (``dist`` active) a training loader yields this rank's slice of each global
    batch (:class:`utilities.distributed.RankSlice`) and an evaluation loader this rank's
    contiguous shard of the split (:func:`utilities.distributed.shard_bounds`)."""
    kwargs: dict[str, Any] = {
        "num_workers": opt.kernels,
        "pin_memory": torch.cuda.is_available(),
        "worker_init_fn": worker_init_fn,
        "generator": loader_generator(seed),
        # Persistent workers (no re-fork and empty queue at every epoch start) keep results exact:
        # training augmentation draws from a stream keyed on (seed, epoch, sample), and the epoch
        # reaches the workers with each index (keyed_batches), never from a worker's own RNG.
        "persistent_workers": opt.kernels > 0,
    }
    if batch_sampler is not None:
        if hasattr(dataset, "keyed_batches"):
            batch_sampler = dataset.keyed_batches(batch_sampler)
        if dist.active:
            batch_sampler = distributed.RankSlice(batch_sampler, dist)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    shard = range(*distributed.shard_bounds(len(dataset), dist)) if dist.active else None
    return torch.utils.data.DataLoader(dataset, batch_size=opt.bs, shuffle=False, sampler=shard, **kwargs)


def training_step(
    model: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dist: distributed.Context = distributed.SINGLE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on this rank's slice of the global batch.

    ``model`` is the module training runs through (:func:`utilities.distributed.wrap_model`). The
    slice's embeddings, labels and dataset indices are gathered over the ranks in rank order, so
    the loss (and the miner inside it) sees the global batch; with one process that is the batch
    itself. Returns the loss and the gathered (detached) embeddings, labels and indices; a
    non-finite value raises :class:`_NonFinite` before the step (the same on every rank, since
    the gathered values are identical everywhere)."""
    device = images.device
    local = model(images)
    embeddings = distributed.gather(local, dist)
    # labels and dataset indices travel together: one all-gather instead of two
    ids = distributed.gather(torch.stack([labels, indices], 1).to(device, torch.long), dist)
    labels, indices = ids[:, 0], ids[:, 1].cpu()
    if not bool(torch.isfinite(embeddings).all()):
        raise _NonFinite("non-finite embeddings")
    if embeddings.dtype in (torch.float16, torch.bfloat16):  # --amp: the loss runs in float32
        embeddings = embeddings.float()
    loss = criterion(embeddings, labels)
    if not bool(torch.isfinite(loss)):
        raise _NonFinite(f"loss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # a no-op scaler unless --amp runs fp16 (architectures/base.py)
    distributed.average_gradients(criterion, dist)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), embeddings.detach(), labels, indices


class _NonFinite(Exception):
    pass


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    epoch: int,
    sampler,
    progress: Progress | None = None,
    last_good: Path | None = None,
    dist: distributed.Context = distributed.SINGLE,
) -> dict[str, float]:
    """One pass over ``loader`` (:func:`training_step` per batch); returns the mean loss, the time,
    the images per second (of all ranks: :func:`utilities.resources.epoch_rate`) and the statistics
    of the batch miner(s) inside ``criterion``. ``progress``: the run's bar (none if None). Each
    step's gathered embeddings go to ``sampler.update_storage`` (a no-op for samplers without an
    embedding memory), so every rank's sampler holds the same memory.

    Non-finite embeddings are caught before the loss sees them (a miner would otherwise misreport
    them, e.g. as "not L2-normalised"), a non-finite loss before the step: either raises
    :class:`TrainingDiverged` naming the epoch, the step and ``last_good`` (the run's
    ``checkpoint_last.pt``, named when it exists)."""
    model.train()
    criterion.train()
    start, losses, n_images = time.perf_counter(), [], 0
    net = distributed.unwrap(model)
    amp_dtype = net.autocast_dtype(device.type) if hasattr(net, "autocast_dtype") else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    progress = progress or Progress()
    for step, (images, labels, idx) in enumerate(progress.track(loader, "training")):
        try:
            loss, embeddings, _, indices = training_step(
                model, criterion, images.to(device, non_blocking=True), labels, idx, optimizer, scaler, dist
            )
        except _NonFinite as err:
            raise _diverged(str(err), epoch, step, last_good) from None
        losses.append(loss.item())
        n_images += len(images)
        sampler.update_storage(embeddings, indices)
        progress.note(f"loss {losses[-1]:.4f}")
    distributed.broadcast_module(net, dist, buffers_only=True)  # one model for the sharded evaluation
    seconds = time.perf_counter() - start
    stats = {"loss": sum(losses) / max(1, len(losses)), "train_time": seconds}
    stats["train_images_per_s"] = epoch_rate(n_images, seconds, dist)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    for module in criterion.modules():  # the miner is a submodule of the loss (or of its wrapper)
        if hasattr(module, "pop_stats"):
            stats.update({f"miner_{k}": v for k, v in module.pop_stats().items()})
    return stats


def _diverged(what: str, epoch: int, step: int, last_good: Path | None) -> TrainingDiverged:
    where = (
        f"the last good checkpoint is {last_good}"
        if last_good is not None and last_good.is_file()
        else "no epoch finished, so there is no checkpoint yet"
    )
    return TrainingDiverged(
        f"training diverged at epoch {epoch} step {step} ({what}); lower --lr (or check the data); {where}"
    )
