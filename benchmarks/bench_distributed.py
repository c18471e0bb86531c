"""Data-parallel training throughput: one plain process vs ``torchrun`` with 2 CPU processes (gloo).

    uv run python benchmarks/bench_distributed.py [--quick] [--bs 64] [--configs smallcnn:32 resnet18:64]
        [--warmup 5] [--steps 20] [--rounds 2] [--loss margin] [--batch_mining distance] [--cuda]

What runs: :func:`utilities.training.training_step` (the step ``main.py`` trains with) on seeded
synthetic uint8 images (``res`` × ``res``, classes of ``--samples_per_class`` = 2, 100 training
classes), random-init backbones (``--not_pretrained``; ``smallcnn_frozen_normalize`` and
``resnet18_frozen_normalize`` by default: with ``_frozen`` BatchNorm (eval mode, the study's
default) the 2-process run computes exactly the 1-process run, which the ``step-0 loss`` line
checks; a train-mode BatchNorm would normalise per rank, and PyTorch's SyncBatchNorm does not run
on the CPU), the study's default loss (margin, β learned) with the distance miner, Adam. The
GLOBAL batch ``--bs`` is the same in both cases:

* **1 process**: a plain ``python`` process, no process group (``distributed.SINGLE``), the
  unwrapped model, the whole batch;
* **2 processes**: ``torchrun --standalone --nproc_per_node 2`` (the real launcher), gloo over
  127.0.0.1 (``GLOO_SOCKET_IFNAME=lo``), the model wrapped by ``distributed.wrap_model`` (DDP, sum
  hook), each rank on its contiguous half of the same global batch; rank 0 prints the result.

Every process uses ONE torch thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), so the
2-process run may use both cores of a 2-core machine and the ideal speed-up is 2×. Each
measurement is a fresh process (subprocess / torchrun), ``--warmup`` untimed steps, then the median
of ``--steps`` timed steps (images/s = global bs / median step time on rank 0); with ``--rounds`` > 1
the 1- and 2-process runs alternate and the round with the best median is reported (all rounds are
printed raw). Columns:

* ``step ms``: median wall time of a step on rank 0 (the ranks meet at every collective);
* ``CPU ms/step``: median process CPU time of a step per rank (all threads, gloo's included);
  ``CPU-time speed-up`` = 1-process CPU ms / the slowest rank's CPU ms, the speed-up two idle cores
  would give if waiting costs nothing: a load-robust companion of the wall-clock speed-up;
* ``gather ms/step``: time inside ``distributed.gather`` (the embeddings; the labels with the indices; the module
  function wrapped with a timer) per step. It includes waiting for the slower rank at the
  all-gather, i.e. load imbalance; ``gather ms (pure)``: the same two gathers right after a
  barrier (the collectives alone);
* ``all-reduce ms/step (exposed)``: DDP's gradient all-reduce as the step sees it, median(step) −
  median(step under ``DDP.no_sync()``), the two kinds of step interleaved so that both see the
  same load (the ``no_sync`` steps do not count for images/s), plus the criterion's own
  all-reduce (``distributed.average_gradients``, timed directly); noisy, may come out negative;
  ``all-reduce ms (pure)``: one all-reduce of the model's gradient size right after a barrier;
* ``loss fwd ms`` (criterion forward: miner + loss, on the gathered batch) and ``optimiser ms``
  (``optimizer.step``): every rank does both for the whole global batch / all parameters, so they
  do not shrink with more processes (Amdahl's serial part).

Targets: 2 processes ≥ 1.7× one process; gather < 5 % of a step. ``os.getloadavg()`` is
printed before and after (and recorded per measurement): the machine is shared, and any other
load eats straight into the second core the 2-process run needs.

``--cuda``: when CUDA is available, additionally the time to create a 1-rank NCCL process group
(``init_process_group`` with ``device_id``, i.e. the eager communicator init) and its first
all-reduce, and the first (cold) and a warm ``training_step`` of ``resnet18`` on the GPU; skipped
with a note otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARK = "BENCH_DISTRIBUTED_RESULT "
N_CLASSES = 100
DEFAULT_ARCH = {"smallcnn": "smallcnn_frozen_normalize", "resnet18": "resnet18_frozen_normalize"}


# ---- the measurement (a fresh process: plain python or one torchrun rank) ---------------------------


def _batches(bs: int, res: int, spc: int, n: int, seed: int = 0):
    """``n`` seeded global batches: uint8 images, labels (bs/spc classes × spc), dataset indices."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        images = torch.randint(0, 256, (bs, 3, res, res), dtype=torch.uint8, generator=g)
        classes = torch.randperm(N_CLASSES, generator=g)[: bs // spc]
        labels = classes.repeat_interleave(spc)
        out.append((images, labels, torch.arange(k * bs, (k + 1) * bs)))
    return out


def run_worker(a: argparse.Namespace) -> dict | None:
    """Train ``--warmup`` + timed steps in this process; the result dict on rank 0, else None."""
    import torch

    torch.set_num_threads(1)

    import architectures
    import batch_mining
    import criteria
    import parameters
    from utilities import distributed, training

    device = torch.device("cpu")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    ctx = distributed.init(distributed.environment(), device, "gloo", timeout_s=600)
    init_s = time.perf_counter() - t0
    distributed.check_batch(a.bs, ctx)
    opt = parameters.parse(
        [
            *("--arch", a.arch, "--not_pretrained", "--bs", str(a.bs), "--seed", "0"),
            *("--loss", a.loss, "--batch_mining", a.batch_mining, "--lr", "1e-5"),
            *("--samples_per_class", str(a.samples_per_class)),
        ]
    )
    torch.manual_seed(0)
    model = architectures.select(opt.arch, opt).to(device)
    miner = batch_mining.select(opt.batch_mining, opt) if criteria.requires_miner(opt.loss) else None
    criterion = criteria.select(opt.loss, opt, n_classes=N_CLASSES, batchminer=miner).to(device)
    distributed.broadcast_module(model, ctx)
    distributed.broadcast_module(criterion, ctx)
    net = distributed.wrap_model(model, ctx, device)
    optimizer = training.build_optimizer(model, criterion, opt)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    net.train()
    criterion.train()

    # timers: distributed.gather / average_gradients are looked up on the module at call time by
    # training_step, so wrapping the module attributes times exactly the calls it makes
    spent = {"gather": 0.0, "avg_grad": 0.0, "loss": 0.0, "optim": 0.0, "forward": 0.0}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t

        return wrapper

    plain_gather = distributed.gather
    distributed.gather = timed("gather", plain_gather)
    distributed.average_gradients = timed("avg_grad", distributed.average_gradients)
    loss_start: list[float] = []
    criterion.register_forward_pre_hook(lambda *_: loss_start.append(time.perf_counter()))

    def loss_end(*_):
        spent["loss"] += time.perf_counter() - loss_start.pop()

    criterion.register_forward_hook(loss_end)
    marks: dict[str, float] = {}

    def start_of(key):
        return lambda *_, **__: marks.__setitem__(key, time.perf_counter())

    def end_of(key):
        def hook(*_, **__):
            spent[key] += time.perf_counter() - marks[key]

        return hook

    model.register_forward_pre_hook(start_of("forward"))
    model.register_forward_hook(end_of("forward"))
    optimizer.register_step_pre_hook(start_of("optim"))
    optimizer.register_step_post_hook(end_of("optim"))

    w, r = ctx.world_size, ctx.rank
    size = a.bs // w
    batches = [
        (x[r * size : (r + 1) * size], y[r * size : (r + 1) * size], i[r * size : (r + 1) * size])
        for x, y, i in _batches(a.bs, a.res, a.samples_per_class, n=4)
    ]
    kinds = ["sync", "nosync"] if ctx.active else ["sync"]
    records: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    first_loss = None
    for step in range(a.warmup + a.steps * len(kinds)):
        kind = kinds[step % len(kinds)]
        images, labels, idx = batches[step % len(batches)]
        for key in spent:
            spent[key] = 0.0
        comm_off = net.no_sync() if kind == "nosync" else contextlib.nullcontext()
        t, cpu = time.perf_counter(), time.process_time()
        with comm_off:
            loss, *_ = training.training_step(net, criterion, images, labels, idx, optimizer, scaler, ctx)
        step_s, cpu_s = time.perf_counter() - t, time.process_time() - cpu
        if step == 0:
            first_loss = float(loss)  # same weights and batch in every run: must match across runs
        if step >= a.warmup:
            records[kind].append({"step": step_s, "cpu": cpu_s, **spent, "loss_value": float(loss)})

    def med(kind: str, key: str) -> float:
        return 1000.0 * statistics.median(rec[key] for rec in records[kind])

    mine = {
        "step_ms": med("sync", "step"),
        "step_ms_all": [round(1000.0 * rec["step"], 2) for rec in records["sync"]],
        "gather_ms": med("sync", "gather"),
        "avg_grad_ms": med("sync", "avg_grad"),
        "loss_ms": med("sync", "loss"),
        "optim_ms": med("sync", "optim"),
        "forward_ms": med("sync", "forward"),
        "cpu_ms": med("sync", "cpu"),
        "nosync_step_ms": med("nosync", "step") if ctx.active else None,
        "first_loss": first_loss,
    }
    mine.update(_pure_comm(net, a.bs // w, opt.embed_dim, ctx, plain_gather))
    per_rank = distributed.all_gather_object(mine, ctx)
    distributed.shutdown(ctx)
    if not ctx.is_main:
        return None
    return {
        **mine,
        "processes": w,
        "backend": ctx.backend,
        "init_s": init_s,
        "rank_step_ms": [round(m["step_ms"], 2) for m in per_rank],
        "rank_gather_ms": [round(m["gather_ms"], 2) for m in per_rank],
        "rank_cpu_ms": [round(m["cpu_ms"], 2) for m in per_rank],
        "threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "torch": torch.__version__,
    }


def _pure_comm(net, rows: int, dim: int, ctx, gather, repeats: int = 15) -> dict[str, float | None]:
    """The collectives alone, each started right after a barrier (no waiting for a slower rank):
    the two gathers of a step (``rows`` × ``dim`` float embeddings with autograd; labels and
    indices as one ``rows`` × 2 integer tensor) and one all-reduce of a flat tensor of the model's gradient size (what DDP's buckets
    carry, un-overlapped). Median milliseconds; None on one process."""
    import torch
    import torch.distributed as dist

    if not ctx.active:
        return {"pure_gather_ms": None, "pure_allreduce_ms": None}
    emb = torch.randn(rows, dim, requires_grad=True)
    ids = torch.stack([torch.arange(rows), torch.arange(rows)], 1)
    flat = torch.zeros(sum(p.numel() for p in net.parameters() if p.requires_grad))
    g_times, r_times = [], []
    for _ in range(repeats + 2):
        dist.barrier()
        t = time.perf_counter()
        gather(emb, ctx), gather(ids, ctx)
        g_times.append(time.perf_counter() - t)
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(flat)
        r_times.append(time.perf_counter() - t)
    return {
        "pure_gather_ms": 1000.0 * statistics.median(g_times[2:]),
        "pure_allreduce_ms": 1000.0 * statistics.median(r_times[2:]),
        "grad_mb": flat.numel() * 4 / 2**20,
    }


def run_cuda(a: argparse.Namespace) -> dict:
    """1-rank NCCL process group: init time and first all-reduce; a cold and a warm step on the GPU."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "CUDA is not available"}
    import torch.distributed as dist

    import architectures
    import batch_mining
    import criteria
    import parameters
    from utilities import training

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    t = time.perf_counter()
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    x = torch.ones(1, device=device)
    dist.all_reduce(x)
    torch.cuda.synchronize()
    first_allreduce_s = time.perf_counter() - t
    dist.destroy_process_group()

    opt = parameters.parse(
        ["--arch", "resnet18_frozen_normalize", "--not_pretrained", "--bs", str(a.bs), "--seed", "0"]
    )
    torch.manual_seed(0)
    model = architectures.select(opt.arch, opt).to(device).train()
    miner = batch_mining.select(opt.batch_mining, opt)
    criterion = criteria.select(opt.loss, opt, n_classes=N_CLASSES, batchminer=miner).to(device).train()
    optimizer = training.build_optimizer(model, criterion, opt)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images, labels, idx = _batches(a.bs, 224, opt.samples_per_class, n=1)[0]
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        training.training_step(model, criterion, images.to(device), labels, idx, optimizer, scaler)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "nccl_init_s": init_s,
        "first_allreduce_s": first_allreduce_s,
        "cold_step_s": times[0],
        "warm_step_ms": 1000.0 * min(times[1:]),
        "res": 224,
        "bs": a.bs,
    }


# ---- the driver -------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MKL_DYNAMIC="FALSE", PYTHONUNBUFFERED="1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo over 127.0.0.1
    return env


def _launcher() -> list[str]:
    """torchrun next to this interpreter (the venv's), else the same launcher as a module."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if torchrun.exists():
        return [str(torchrun)]
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def measure(processes: int, arch: str, res: int, a: argparse.Namespace) -> dict:
    worker = [
        str(Path(__file__).resolve()),
        *("--_worker", "train", "--arch", arch, "--res", str(res), "--bs", str(a.bs)),
        *("--warmup", str(a.warmup), "--steps", str(a.steps), "--loss", a.loss),
        *("--batch_mining", a.batch_mining, "--samples_per_class", str(a.samples_per_class)),
    ]
    if processes == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [*_launcher(), "--standalone", "--nproc_per_node", str(processes), *worker]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t
    lines = [line for line in out.stdout.splitlines() if MARK in line]
    if out.returncode or not lines:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        raise SystemExit(f"measurement failed (exit {out.returncode}): {' '.join(cmd)}")
    result = json.loads(lines[-1].split(MARK, 1)[1])
    result["wall_s"] = wall
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: 2 warm-up + 6 timed steps, 1 round")
    p.add_argument("--bs", type=int, default=64, help="GLOBAL batch size (same for 1 and 2 processes)")
    p.add_argument(
        "--configs",
        nargs="+",
        default=["smallcnn:32", "resnet18:64"],
        help=f"arch:res pairs; a bare backbone name gets the default modifiers ({DEFAULT_ARCH})",
    )
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median)")
    p.add_argument("--rounds", type=int, default=2, help="alternating 1-/2-process runs; best median kept")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--loss", default="margin")
    p.add_argument("--batch_mining", default="distance")
    p.add_argument("--samples_per_class", type=int, default=2)
    p.add_argument("--cuda", action="store_true", help="also: 1-rank NCCL init + a GPU training step")
    # internal: one measurement in this process
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arch", default="smallcnn_normalize", help=argparse.SUPPRESS)
    p.add_argument("--res", type=int, default=32, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a._worker == "train":
        result = run_worker(a)
        if result is not None:
            print(MARK + json.dumps(result), flush=True)
        return
    if a._worker == "cuda":
        print(MARK + json.dumps(run_cuda(a)), flush=True)
        return
    if a.quick:
        a.warmup, a.steps, a.rounds = min(a.warmup, 2), min(a.steps, 6), 1

    start, load_before = time.perf_counter(), os.getloadavg()
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in load_before)} (1/5/15 min), "
        f"{os.cpu_count()} CPUs; global bs {a.bs}, loss {a.loss} + {a.batch_mining}, "
        f"{a.warmup} warm-up + {a.steps} timed steps, {a.rounds} round(s), 1 torch thread per process",
        flush=True,
    )
    rows = []
    for config in a.configs:
        name, _, res = config.partition(":")
        arch = DEFAULT_ARCH.get(name, name)
        res = int(res or 32)
        best: dict[int, dict] = {}
        for rnd in range(a.rounds):
            for procs in (1, a.processes):
                r = measure(procs, arch, res, a)
                print(
                    "raw: "
                    + json.dumps(
                        {
                            "arch": arch,
                            "res": res,
                            "round": rnd,
                            **{k: v for k, v in r.items() if k != "step_ms_all"},
                        }
                    ),
                    flush=True,
                )
                if procs not in best or r["step_ms"] < best[procs]["step_ms"]:
                    best[procs] = r
        rows.append((arch, res, best))
    load_after = os.getloadavg()

    print()
    print(
        "| arch | res | global bs | processes | images/s | speed-up | step ms | CPU ms/step | CPU-time speed-up "
        "| gather ms/step | gather % of step | gather ms (pure) | all-reduce ms/step (exposed) "
        "| all-reduce ms (pure) | loss fwd ms | optimiser ms | load 1-min |"
    )
    print("|" + "---|" * 17)
    verdicts = []
    for arch, res, best in rows:
        one = best[1]
        for procs in sorted(best):
            r = best[procs]
            ips = a.bs / (r["step_ms"] / 1000.0)
            speedup = one["step_ms"] / r["step_ms"]
            cpu = max(r["rank_cpu_ms"])
            gather_pct = 100 * r["gather_ms"] / r["step_ms"]
            if procs > 1:
                exposed = r["step_ms"] - r["nosync_step_ms"] + r["avg_grad_ms"]
                comm = (
                    f"{r['pure_gather_ms']:.2f} | {exposed:.1f} ({100 * exposed / r['step_ms']:.0f} %) "
                    f"| {r['pure_allreduce_ms']:.1f} ({r['grad_mb']:.1f} MB)"
                )
            else:
                comm = "- | - | -"
            print(
                f"| {arch} | {res} | {a.bs} | {procs} | {ips:.1f} | {speedup:.2f}× | {r['step_ms']:.1f} "
                f"| {'/'.join(f'{x:.0f}' for x in r['rank_cpu_ms'])} | {one['cpu_ms'] / cpu:.2f}× "
                f"| {r['gather_ms']:.2f} | {gather_pct:.1f} | {comm} | {r['loss_ms']:.1f} | {r['optim_ms']:.1f} "
                f"| {r['load_start'][0]:.2f}→{r['load_end'][0]:.2f} |"
            )
            if procs > 1:
                verdicts.append(
                    f"{arch} @ {res}: speed-up {speedup:.2f}× ({'met' if speedup >= 1.7 else 'NOT met'}, "
                    f"target ≥ 1.7×; CPU-time speed-up {one['cpu_ms'] / cpu:.2f}×); gather {gather_pct:.1f} % "
                    f"of a step ({'met' if gather_pct < 5 else 'NOT met'}, target < 5 %; pure gather "
                    f"{100 * r['pure_gather_ms'] / r['step_ms']:.1f} %)"
                )
    print()
    for v in verdicts:
        print("- " + v)
    for arch, res, best in rows:
        losses = {procs: r["first_loss"] for procs, r in best.items()}
        same = len(set(losses.values())) == 1
        print(
            f"- step-0 loss {arch} @ {res}: "
            + ", ".join(f"{procs} proc {v:.7f}" for procs, v in sorted(losses.items()))
            + (" (identical)" if same else " (DIFFERENT: the runs do not compute the same step)")
        )

    if a.cuda:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_worker", "cuda", "--bs", str(a.bs)],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=ROOT,
            timeout=1800,
        )
        lines = [line for line in out.stdout.splitlines() if MARK in line]
        if out.returncode or not lines:
            print(f"\n--cuda failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        else:
            print("\n--cuda: " + lines[-1].split(MARK, 1)[1])

    print(
        f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)} (1/5/15 min); "
        f"wall time {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
