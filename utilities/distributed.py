"""One run on several processes (``torchrun``): the process group and the few collectives training
and evaluation need, written so that N processes reproduce the single-process run.

How the N-process run equals the 1-process run on the same global batch:

* **Batches.** Every rank builds the same global batch of ``--bs`` (same seeded sampler) and takes
  its contiguous slice (:class:`RankSlice`), so rank order = the single-process batch order.
* **Losses see the global batch.** :func:`gather` all-gathers embeddings (and labels, indices) in
  rank order; its backward returns each rank's own slice of the gradient. The loss (and the miner
  inside it) then runs on identical inputs on every rank and gives the identical value.
* **Gradients.** The loss L is a function of the whole batch, so dL/dθ = Σ_r (part through rank
  r's slice). The model's DDP wrapper therefore *sums* gradients across ranks
  (:func:`wrap_model` registers a sum hook instead of DDP's default mean); no factor of the world
  size appears anywhere. The criterion's own parameters (proxies, class weights, β) get the full
  gradient on every rank already; :func:`average_gradients` averages them once more so that
  non-deterministic kernels can never let the ranks drift apart.
* **Evaluation.** Each rank embeds a contiguous shard (:func:`shard_bounds`) and
  :func:`gather_shards` reassembles the split in dataset order (no padding sample survives).
* **BatchNorm.** Equal for ``_frozen`` backbones (BatchNorm in eval mode) and, on CUDA, with
  ``--sync_bn``. A backbone with BatchNorm in train mode otherwise normalises each rank's slice
  with that slice's statistics: the one expected difference from the single-process run (main.py
  logs it). DDP broadcasts rank 0's running statistics at every forward, and
  ``broadcast_module(..., buffers_only=True)`` once more before evaluation, so every shard is
  embedded by the same model.
* **State.** Model, criterion, optimiser and sampler are identical on every rank and saved once;
  the process RNGs differ per rank and are saved for every rank (:class:`PerRank`).

``python main.py`` (no ``WORLD_SIZE`` in the environment) runs with :data:`SINGLE`, for which
every function here is the identity or a no-op.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utilities.errors import ConfigError

BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "none"

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not an integer (set by torchrun)") from None


def environment() -> Context:
    """The rank layout torchrun (or ``srun`` with the same variables) put into the environment,
    without touching the network. ``WORLD_SIZE`` unset or 1: :data:`SINGLE`."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    return Context(rank, world, local_rank, _env_int("LOCAL_WORLD_SIZE", 1), "pending")


def choose_backend(requested: str, device: torch.device) -> str:
    """``auto``: NCCL for CUDA, gloo for the CPU. NCCL without CUDA is a one-line error."""
    if requested not in BACKENDS:
        raise ConfigError(f"--dist_backend {requested}: choose from {', '.join(BACKENDS)}")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError(
            f"--dist_backend nccl needs CUDA, but this run trains on {device} "
            "(use --dist_backend gloo or auto for CPU processes)"
        )
    return requested


def device_for(ctx: Context, device: str, gpu: list[int]) -> torch.device | None:
    """The device of this rank: ``cuda:<local_rank>`` (the ``local_rank``-th ``--gpu`` entry when
    several are given) for ``--device cuda``/``auto`` on a CUDA machine; None: single-process rule.
    More processes on a node than GPUs is a one-line error (they would share and oversubscribe)."""
    if not ctx.active or device == "cpu" or not torch.cuda.is_available():
        if ctx.active and device == "cuda":
            raise ConfigError("--device cuda was requested but no CUDA device is available")
        return None if not ctx.active else torch.device("cpu")
    n = torch.cuda.device_count()
    ids = gpu if len(gpu) > 1 else list(range(n))
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--gpu {bad[0]}: only {n} CUDA device(s) on this machine")
    if ctx.local_world_size > len(ids):
        raise ConfigError(
            f"--device {device}: {ctx.local_world_size} processes on this node but {len(ids)} usable "
            f"GPU(s) of {n}; start at most one process per GPU (torchrun --nproc_per_node {min(n, len(ids))})"
        )
    return torch.device("cuda", ids[ctx.local_rank])


def init(ctx: Context, device: torch.device, backend: str, timeout_s: float) -> Context:
    """Join the process group (torchrun's rendezvous variables); every collective then fails after
    ``timeout_s`` instead of hanging when another rank died. Returns the context with its backend."""
    if not ctx.active:
        return SINGLE
    chosen = choose_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            chosen,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return Context(ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, chosen)


def shutdown(ctx: Context) -> None:
    """Leave the process group together: a rank that exits while another still talks to it can
    make the other's gloo connection fail at interpreter exit (SIGABRT in its destructor)."""
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- checks -----------------------------------------------------------------------------------------


def check_batch(bs: int, ctx: Context) -> None:
    """``--bs`` is the global batch; each of the ranks takes bs / world_size of it."""
    if bs % ctx.world_size:
        raise ConfigError(
            f"--bs {bs} is the global batch and must be divisible by the {ctx.world_size} processes "
            f"(e.g. --bs {max(ctx.world_size, bs - bs % ctx.world_size)})"
        )


def check_same_flags(flags: dict[str, Any], ctx: Context) -> None:
    """Every rank must run the same experiment: the first flag whose value differs from rank 0's
    is a one-line error on every rank (a per-rank config file or environment drift)."""
    if not ctx.active:
        return
    text = json.dumps(flags, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    digests = all_gather_object(digest, ctx)
    if len(set(digests)) == 1:
        return
    other = next(r for r, d in enumerate(digests) if d != digests[0])
    theirs = broadcast_object(flags if ctx.rank == other else None, ctx, src=other)
    mine = broadcast_object(flags if ctx.is_main else None, ctx, src=0)
    key = next((k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)), "?")
    raise ConfigError(
        f"the processes were started with different flags: --{key} is {mine.get(key)!r} on rank 0 "
        f"but {theirs.get(key)!r} on rank {other}; every rank must get the same command line"
    )


# ---- collectives --------------------------------------------------------------------------------------


class _Gather(torch.autograd.Function):
    """All-gather equal-sized slices in rank order; backward: this rank's slice of the gradient.

    The loss on the gathered batch is computed identically on every rank, so the gradient arriving
    here is the same everywhere and this rank's share of dL/dθ flows through its own rows only;
    the model's DDP hook then sums the ranks' shares (see :func:`wrap_model`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, world: int, rank: int) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], rank
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None, None


def gather(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """(world·B, ...) from every rank's (B, ...), in rank order; differentiable when ``x`` is."""
    if not ctx.active:
        return x
    if x.requires_grad:
        return _Gather.apply(x, ctx.world_size, ctx.rank)
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shard_bounds(n: int, ctx: Context) -> tuple[int, int]:
    """Rank ``r``'s contiguous share ``[r·n//W, (r+1)·n//W)`` of ``n`` items (sizes differ by ≤ 1)."""
    return ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size


def gather_shards(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """``x`` (n, ...) of which each rank filled only its :func:`shard_bounds` rows -> every row
    filled on every rank, in dataset order. Shards are padded to equal size for the all-gather and
    the padding is cut off again, so no sample is duplicated or dropped."""
    if not ctx.active:
        return x
    n, w = x.shape[0], ctx.world_size
    bounds = [(r * n // w, (r + 1) * n // w) for r in range(w)]
    longest = max(b - a for a, b in bounds)
    lo, hi = bounds[ctx.rank]
    mine = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    mine[: hi - lo] = x[lo:hi]
    parts = [torch.empty_like(mine) for _ in range(w)]
    dist.all_gather(parts, mine)
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, bounds, strict=True)])


def all_gather_object(obj: Any, ctx: Context) -> list[Any]:
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: Context, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. metrics computed once on rank 0)."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


# ---- model, criterion, samplers ---------------------------------------------------------------------------


def _sum_hook(_state, bucket):  # unannotated: DDP rejects the string annotations of this module
    """DDP communication hook: the sum (not DDP's mean) of the ranks' gradient shares."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap_model(model: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """The module training runs through: ``model`` itself on one process, else a
    DistributedDataParallel wrapper that sums gradients (see the module docstring). The unwrapped
    ``model`` stays the object that is evaluated and checkpointed."""
    if not ctx.active:
        return model
    ddp = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # gradients live in the communication buckets: one copy less
    )
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_module(module: nn.Module, ctx: Context, *, buffers_only: bool = False) -> None:
    """Rank 0's parameters and buffers on every rank (e.g. randomly initialised proxies); with
    ``buffers_only`` just the buffers (BatchNorm running statistics before a sharded evaluation:
    in train mode without ``--sync_bn`` each rank's last forward updated its own)."""
    if not ctx.active:
        return
    tensors = [*([] if buffers_only else module.parameters()), *module.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def average_gradients(module: nn.Module, ctx: Context) -> None:
    """Average the gradients of ``module``'s parameters across ranks, in one flat all-reduce.
    Each rank computed the full gradient on the gathered batch, so the mean equals it."""
    if not ctx.active:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def batchnorm_in_train_mode(model: nn.Module) -> bool:
    """Whether training would normalise with batch statistics (BatchNorm not frozen)."""
    was = model.training
    model.train()
    found = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    model.train(was)
    return found


def check_sync_bn(sync_bn: bool, ctx: Context, device: torch.device) -> None:
    """PyTorch's SyncBatchNorm runs on GPUs only: ``--sync_bn`` with CPU processes is refused."""
    if sync_bn and ctx.active and device.type == "cpu":
        raise ConfigError(
            "--sync_bn needs CUDA processes (PyTorch's SyncBatchNorm does not run on the CPU); on CPUs "
            "use a _frozen backbone (BatchNorm in eval mode), or accept per-rank statistics"
        )


def convert_sync_bn(model: nn.Module, ctx: Context) -> nn.Module:
    """``--sync_bn``: BatchNorm statistics over the global batch (SyncBatchNorm) when training on
    several processes; on one process plain BatchNorm already sees the whole batch."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if ctx.active else model


class RankSlice(torch.utils.data.Sampler):
    """Yields rank ``r``'s contiguous slice of every global batch of the wrapped batch sampler.

    Every rank runs the same seeded sampler, so the slices of one step partition one global batch
    in rank order. State, storage hooks and length stay with the wrapped sampler (its one owner)."""

    def __init__(self, sampler: torch.utils.data.Sampler, ctx: Context) -> None:
        self.sampler, self.ctx = sampler, ctx

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        w, r = self.ctx.world_size, self.ctx.rank
        for batch in self.sampler:
            batch = list(batch)
            if len(batch) % w:
                raise RuntimeError(f"a batch of {len(batch)} cannot be split over {w} processes")
            size = len(batch) // w
            yield batch[r * size : (r + 1) * size]


class PerRank:
    """Checkpoints one state per rank of a per-process object (the process RNGs): ``state_dict``
    is a collective that returns every rank's state (on every rank); ``load_state_dict`` takes this
    rank's. A checkpoint of another world size: rank r takes entry r if it exists, else entry 0
    (the run continues correctly, though not bit-for-bit). A single-process run keeps the plain
    state (checkpoints stay interchangeable with runs written before distributed training)."""

    def __init__(self, part: Any, ctx: Context) -> None:
        self.part, self.ctx = part, ctx

    def state_dict(self) -> Any:
        state = self.part.state_dict()
        if not self.ctx.active:
            return state
        return {"per_rank": all_gather_object(state, self.ctx)}

    def load_state_dict(self, state: Any) -> None:
        if isinstance(state, dict) and "per_rank" in state:
            ranks = state["per_rank"]
            state = ranks[self.ctx.rank] if self.ctx.rank < len(ranks) else ranks[0]
        self.part.load_state_dict(state)
