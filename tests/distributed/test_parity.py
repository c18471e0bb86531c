"""torchrun data parallelism equals the single-process run (utilities/distributed.py).

One 2-process gloo group is spawned for the whole module. Each rank trains every case (every
criterion of the registry, with a compatible miner when it needs one, and again inside the
cross-batch memory when it supports one) for :data:`STEPS` optimiser steps of
:func:`utilities.training.training_step` on its contiguous half of the same global batches; the
test process runs the same cases on one process with the whole batch. Everything is float64, so
the only differences are summation order (BLAS blocking over 8 vs 16 rows, the DDP sum of two
partial gradients instead of one backward over the batch): ~1e-15 relative. :data:`TOL` = 1e-6
absolute is far above that and far below what any real bug gives (a factor of the world size,
a wrong slice, a miner drawing different tuples: differences of 1e-3 and more).

Miners, one per tuple kind (:data:`MINERS`): ``distance`` for triplets (the default miner, and
stochastic with its own seeded generator: the ranks and the single process must consume the same
random numbers, which the comparison of the generator states checks), ``multisimilarity`` for
pairs, ``npair`` (seeded positives) and ``lifted`` (deterministic) for the set kinds.

The same group also runs the unit checks of the collectives (:func:`_collective_checks`); the
checks that need no process group run in the test process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import socket
import time
import traceback
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import batch_mining
import criteria
from utilities import distributed, training
from utilities.distributed import Context, PerRank, RankSlice
from utilities.errors import ConfigError
from utilities.seeding import GlobalRNG

WORLD = 2
CLASSES_PER_BATCH, PER_CLASS = 4, 4
BATCH = CLASSES_PER_BATCH * PER_CLASS  # global batch: 16 = 2 ranks x 8
N_CLASSES = 8  # training classes (proxy / class-weight tables); each batch draws 4 of them
IN_DIM, HIDDEN, EMBED_DIM = 12, 24, 16
STEPS = 3
XBM_SIZE = 24  # < 2 batches: the FIFO wraps around during the run
TOL = 1e-6
MINERS = {"triplets": "distance", "pairs": "multisimilarity", "npair": "npair", "lifted": "lifted"}
# startup (importing torch in two fresh processes on a loaded machine) plus every case
GROUP_TIMEOUT_S = 240
COLLECTIVE_TIMEOUT_S = 60

CASES = [(name, False) for name, _ in criteria.REGISTRY] + [
    (name, True) for name, cls in criteria.REGISTRY if cls.supports_xbm
]


def _case_id(name: str, xbm: bool) -> str:
    return f"{name}-xbm" if xbm else name


# ---- one training run (any world size) ---------------------------------------------------------------


class _Net(nn.Module):
    """A small embedding net ending in L2 normalisation (what --arch ..._normalize gives), with the
    distribution head a probabilistic loss needs: log σ² per dimension or log κ packed after the
    mean (criteria/_common.py)."""

    def __init__(self, distribution: str = "dirac") -> None:
        super().__init__()
        self.body = nn.Linear(IN_DIM, HIDDEN)
        self.last_linear = nn.Linear(HIDDEN, EMBED_DIM)
        extra = {"dirac": 0, "gaussian": EMBED_DIM, "vmf": 1}[distribution]
        self.head = nn.Linear(HIDDEN, extra) if extra else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        mean = F.normalize(self.last_linear(h), dim=1)
        return mean if self.head is None else torch.cat([mean, self.head(h)], dim=1)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """STEPS global batches: fixed features, 4 classes x 4 samples, classes interleaved so each
    rank's half holds samples of several classes, and dataset indices."""
    out = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(BATCH, IN_DIM, generator=g, dtype=torch.float64)
        classes = torch.randperm(N_CLASSES, generator=g)[:CLASSES_PER_BATCH]
        labels = classes.repeat_interleave(PER_CLASS)[torch.randperm(BATCH, generator=g)]
        out.append((x, labels, torch.arange(BATCH) + step * BATCH))
    return out


def _numpy_state(net: nn.Module, criterion: nn.Module) -> dict[str, np.ndarray]:
    """Model parameters and the criterion's whole state_dict (parameters, buffers such as the XBM
    memory, the miner's generator states), as numpy copies."""
    state = {f"model.{k}": v for k, v in net.named_parameters()}
    for k, v in criterion.state_dict().items():
        if isinstance(v, dict):  # a miner's extra state: generator states by device
            state.update({f"criterion.{k}.{kk}": vv for kk, vv in v.items()})
        else:
            state[f"criterion.{k}"] = v
    return {k: v.detach().cpu().clone().numpy() for k, v in state.items()}


def run_case(name: str, opt: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Train ``STEPS`` steps of ``training_step`` on this rank's slices; the per-step loss, the
    gradient of the loss w.r.t. this rank's embeddings, the gathered batch, and the state before
    and after."""
    torch.manual_seed(0)  # the same initial model and criterion on every rank and in the reference
    net = _Net(criteria.distribution(name)).double()
    if criteria.frozen_mean(name):  # PFE, SCF: only the uncertainty head trains (as main.py builds it)
        net.body.requires_grad_(False), net.last_linear.requires_grad_(False)
    cls = criteria.REGISTRY.get(name)
    miner = batch_mining.select(opt.batch_mining, opt) if cls.requires_miner else None
    criterion = criteria.select(name, opt, n_classes=N_CLASSES, batchminer=miner).double()
    optimizer = training.build_optimizer(net, criterion, opt)
    model = distributed.wrap_model(net, ctx, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    out: dict[str, Any] = {"init": _numpy_state(net, criterion)}
    out["trainable"] = [f"model.{k}" for k, p in net.named_parameters() if p.requires_grad]
    out["trainable"] += [f"criterion.{k}" for k, _ in criterion.named_parameters()]
    out.update(loss=[], grad=[], emb=[], labels=[], indices=[])
    captured: dict[str, torch.Tensor] = {}

    def keep_output(_module, _inputs, output):
        output.retain_grad()
        captured["out"] = output

    net.register_forward_hook(keep_output)
    size = BATCH // ctx.world_size
    rows = slice(ctx.rank * size, (ctx.rank + 1) * size)
    for x, labels, indices in _batches():
        loss, emb, lab, idx = training.training_step(
            model, criterion, x[rows], labels[rows], indices[rows], optimizer, scaler, ctx
        )
        out["loss"].append(float(loss))
        out["grad"].append(captured.pop("out").grad.detach().clone().numpy())
        out["emb"].append(emb.clone().numpy())
        out["labels"].append(lab.clone().numpy())
        out["indices"].append(idx.clone().numpy())
    out["final"] = _numpy_state(net, criterion)
    return out


def _run_all(cases: list[tuple[str, str, argparse.Namespace]], ctx: Context) -> dict[str, Any]:
    """Every case; a failing case is returned as its traceback (text) instead of results."""
    results: dict[str, Any] = {}
    for cid, name, opt in cases:
        try:
            results[cid] = run_case(name, opt, ctx)
        except Exception:
            results[cid] = traceback.format_exc()
        # the ranks must still be in step: a case that failed on one rank only would leave the
        # next collective unmatched, so stop there instead of hanging
        if len(set(distributed.all_gather_object(isinstance(results[cid], str), ctx))) > 1:
            results["__abort__"] = f"the ranks disagreed on whether case {cid} failed"
            break
    return results


# ---- the spawned group ----------------------------------------------------------------------------------


class _Part:
    """A checkpointable per-process object (like the process RNGs)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def state_dict(self) -> dict[str, int]:
        return {"v": self.value}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.value = state["v"]


def _config_error(fn) -> str:
    try:
        fn()
    except ConfigError as err:
        return f"ConfigError: {err}"
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def _collective_checks(ctx: Context) -> dict[str, Any]:
    """The collectives of utilities/distributed.py on this rank, as plain values."""
    r, out = ctx.rank, {}
    # gather_shards: each rank filled only its shard; the rest is garbage that must not survive
    for n in (7, 1, 2):
        lo, hi = distributed.shard_bounds(n, ctx)
        x = torch.full((n, 3), -1.0)
        x[lo:hi] = torch.arange(lo * 3, hi * 3, dtype=torch.float32).view(-1, 3)
        out[f"shards_{n}"] = distributed.gather_shards(x, ctx).numpy()
        out[f"bounds_{n}"] = (lo, hi)
    labels = torch.tensor([10 * r, 10 * r + 1])
    out["gather_long"] = distributed.gather(labels, ctx).numpy()
    x = torch.full((2, 3), float(r), dtype=torch.float64, requires_grad=True)
    y = distributed.gather(x, ctx)
    (y * torch.arange(12, dtype=torch.float64).view(4, 3)).sum().backward()
    out["gather_grad"] = (y.detach().numpy(), x.grad.numpy())
    # wrap_model: the ranks' gradient shares are summed, not averaged
    lin = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ddp = distributed.wrap_model(lin, ctx, torch.device("cpu"))
    ddp(torch.full((1, 3), float(r + 1), dtype=torch.float64)).sum().backward()
    out["ddp_grad"] = lin.weight.grad.numpy().copy()
    # average_gradients: the mean over the ranks; a parameter without a gradient is left alone
    mod = nn.Linear(2, 2).double()
    mod.weight.grad = torch.full((2, 2), float(r + 1), dtype=torch.float64)
    distributed.average_gradients(mod, ctx)
    out["avg_grad"] = (mod.weight.grad.numpy().copy(), mod.bias.grad)
    # broadcast_module / broadcast_object / all_gather_object
    mod2 = nn.Linear(2, 2)
    with torch.no_grad():
        mod2.weight.fill_(float(r))
    distributed.broadcast_module(mod2, ctx)
    out["broadcast_module"] = mod2.weight.detach().numpy().copy()
    out["broadcast_object"] = distributed.broadcast_object({"from": r}, ctx, src=1)
    out["all_gather_object"] = distributed.all_gather_object(r * 3, ctx)
    # check_same_flags
    same = {"lr": 0.1, "bs": 16, "loss": "margin"}
    out["flags_same"] = _config_error(lambda: distributed.check_same_flags(same, ctx))
    differ = {**same, "bs": 16 + 16 * r}
    out["flags_differ"] = _config_error(lambda: distributed.check_same_flags(differ, ctx))
    extra = {**same, **({"extra": 5} if r == 1 else {})}
    out["flags_extra"] = _config_error(lambda: distributed.check_same_flags(extra, ctx))
    # PerRank: every rank's state saved; each rank restores its own, or entry 0 / a plain state
    state = PerRank(_Part(100 + r), ctx).state_dict()
    loaded = {}
    for key, ckpt in {
        "own": state,
        "one_rank": {"per_rank": [{"v": 5}]},
        "plain": {"v": 7},
    }.items():
        part = _Part(-1)
        PerRank(part, ctx).load_state_dict(ckpt)
        loaded[key] = part.value
    out["per_rank"] = (state, loaded)
    # PerRank of the process RNGs: a round trip reproduces this rank's own stream
    torch.manual_seed(500 + r)
    rng = PerRank(GlobalRNG(), ctx)
    saved = rng.state_dict()
    before = torch.rand(4).numpy()
    torch.manual_seed(0)
    rng.load_state_dict(saved)
    out["rng"] = (len(saved["per_rank"]), before, torch.rand(4).numpy())
    distributed.barrier(ctx)
    return out


def _worker(rank: int, port: int, cases, results: Any) -> None:
    try:
        torch.set_num_threads(1)
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(WORLD),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(WORLD),
        )
        ctx = distributed.init(distributed.environment(), torch.device("cpu"), "gloo", COLLECTIVE_TIMEOUT_S)
        try:
            out: dict[str, Any] = {"ctx": (ctx.rank, ctx.world_size, ctx.backend)}
            out["cases"] = _run_all(cases, ctx)
            try:  # after the cases: a collective that desynchronises the ranks cannot spoil them
                out["collectives"] = _collective_checks(ctx)
            except Exception:
                out["collectives"] = traceback.format_exc()
        finally:
            distributed.shutdown(ctx)
        results.put((rank, out))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case_opt(parameters, name: str, xbm: bool) -> argparse.Namespace:
    cls = criteria.REGISTRY.get(name)
    miner = MINERS[cls.tuple_kinds[0]] if cls.requires_miner else "distance"
    argv = ["--loss", name, "--batch_mining", miner, "--embed_dim", str(EMBED_DIM)]
    argv += ["--optim", "sgd", "--lr", "0.01", "--bs", str(BATCH), "--seed", "0"]
    argv += ["--xbm_size", str(XBM_SIZE if xbm else 0)]
    opt = parameters.parse(argv)
    # the loss's own learning rates (class weights, margin β) large enough that three SGD steps
    # move them visibly (the defaults of 5e-4 would hardly change them)
    for key in vars(opt):
        if key.startswith(f"loss_{name}_") and key.endswith("lr"):
            setattr(opt, key, 0.05)
    return opt


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Any], dict[int, Any]]:
    """(single-process results by case, {rank: results of the 2-process group})."""
    import parameters  # imported here: the spawned workers import this module and need none of it

    cases = [(_case_id(n, x), n, _case_opt(parameters, n, x)) for n, x in CASES]
    mp = torch.multiprocessing.get_context("spawn")
    results = mp.Queue()
    port = _free_port()
    procs = [mp.Process(target=_worker, args=(r, port, cases, results), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    ranks: dict[int, Any] = {}
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the reference runs while the workers start (2 cores)
        try:
            reference = _run_all(cases, distributed.SINGLE)
        finally:
            torch.set_num_threads(threads)
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        while len(ranks) < WORLD:
            dead = [p.exitcode for i, p in enumerate(procs) if i not in ranks and not p.is_alive()]
            try:  # a worker that exited has flushed what it put: it arrives within the timeout
                rank, out = results.get(timeout=5.0 if dead else 1.0)
                ranks[rank] = out
            except queue.Empty:
                if dead:
                    pytest.fail(f"a worker exited with code {dead[0]} without reporting", pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail(f"the 2-process group did not finish within {GROUP_TIMEOUT_S} s")
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    for rank, out in ranks.items():
        if isinstance(out, str):
            pytest.fail(f"rank {rank} failed:\n{out}", pytrace=False)
    return reference, ranks


# ---- parity -------------------------------------------------------------------------------------------------


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    if a.size == 0:
        return 0.0
    if not np.issubdtype(a.dtype, np.floating):
        return 0.0 if np.array_equal(a, b) else float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _results(runs, cid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    reference, ranks = runs
    for who, res in [("single process", reference), *((f"rank {r}", ranks[r]["cases"]) for r in ranks)]:
        if "__abort__" in res and cid not in res:
            pytest.fail(f"{who}: {res['__abort__']}")
        if isinstance(res[cid], str):
            pytest.fail(f"{who} failed on {cid}:\n{res[cid]}", pytrace=False)
    return reference[cid], [ranks[r]["cases"][cid] for r in range(WORLD)]


@pytest.mark.parametrize(("name", "xbm"), CASES, ids=[_case_id(n, x) for n, x in CASES])
def test_two_processes_equal_one(runs, name, xbm):
    """Loss, embedding gradients and every model / criterion parameter and buffer after STEPS
    steps: 2 processes x 8 samples == 1 process x 16 samples (to TOL); the ranks bit-identical."""
    ref, per_rank = _results(runs, _case_id(name, xbm))
    size = BATCH // WORLD
    # the ranks compute the same loss on the same gathered batch: identical, bit for bit
    for res in per_rank[1:]:
        assert res["loss"] == per_rank[0]["loss"]
        for step in range(STEPS):
            np.testing.assert_array_equal(res["emb"][step], per_rank[0]["emb"][step])
        assert res["final"].keys() == per_rank[0]["final"].keys()
        for key, value in res["final"].items():
            np.testing.assert_array_equal(value, per_rank[0]["final"][key], err_msg=key)

    report = {"loss": 0.0, "grad": 0.0, "params": 0.0}
    for step in range(STEPS):
        rank0 = per_rank[0]
        np.testing.assert_array_equal(rank0["labels"][step], ref["labels"][step])
        np.testing.assert_array_equal(rank0["indices"][step], ref["indices"][step])
        assert _max_diff(rank0["emb"][step], ref["emb"][step]) <= TOL
        report["loss"] = max(report["loss"], abs(rank0["loss"][step] - ref["loss"][step]))
        for r, res in enumerate(per_rank):
            report["grad"] = max(
                report["grad"], _max_diff(res["grad"][step], ref["grad"][step][r * size : (r + 1) * size])
            )
    assert per_rank[0]["final"].keys() == ref["final"].keys()
    worst = max(ref["final"], key=lambda k: _max_diff(per_rank[0]["final"][k], ref["final"][k]))
    report["params"] = _max_diff(per_rank[0]["final"][worst], ref["final"][worst])
    print(f"{_case_id(name, xbm)}: " + " ".join(f"{k} {v:.1e}" for k, v in report.items()))
    assert report["loss"] <= TOL, f"loss differs by {report['loss']:.3e}: {ref['loss']} vs {rank0['loss']}"
    assert report["grad"] <= TOL, f"embedding gradients differ by {report['grad']:.3e}"
    assert report["params"] <= TOL, f"{worst} differs by {report['params']:.3e} after {STEPS} steps"

    # the comparison is not vacuous: the loss has gradients and every parameter moved
    assert max(float(np.abs(g).max()) for g in ref["grad"]) > 1e-6
    for key in ref["trainable"]:
        moved = _max_diff(ref["final"][key], ref["init"][key])
        assert moved > 1e-5, f"{key} did not move in {STEPS} steps ({moved:.1e})"
    if xbm:
        # the memory filled and wrapped around (the FIFO pointer went past the end)
        assert int(ref["final"]["criterion.filled"]) == XBM_SIZE
        assert int(ref["final"]["criterion.pointer"]) == (STEPS * BATCH) % XBM_SIZE


# ---- the collectives in the group ---------------------------------------------------------------------------


def _collectives(runs) -> list[dict[str, Any]]:
    _, ranks = runs
    out = [ranks[r]["collectives"] for r in range(WORLD)]
    for r, res in enumerate(out):
        if isinstance(res, str):
            pytest.fail(f"rank {r} failed in the collective checks:\n{res}", pytrace=False)
    return out


def test_group_context(runs):
    _, ranks = runs
    assert [ranks[r]["ctx"] for r in range(WORLD)] == [(r, WORLD, "gloo") for r in range(WORLD)]


@pytest.mark.parametrize("n", [7, 1, 2])
def test_gather_shards_reassembles_in_order(runs, n):
    """n = 7: shards of 3 and 4 rows (padded to 4 for the all-gather, padding cut off); n = 1:
    rank 0 owns nothing and rank 1 the single row."""
    expected = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    res = _collectives(runs)
    assert [r[f"bounds_{n}"] for r in res] == [(0, n // 2), (n // 2, n)]
    for r in res:
        np.testing.assert_array_equal(r[f"shards_{n}"], expected)


def test_gather_in_rank_order(runs):
    res = _collectives(runs)
    weights = np.arange(12, dtype=np.float64).reshape(4, 3)
    for rank, r in enumerate(res):
        np.testing.assert_array_equal(r["gather_long"], [0, 1, 10, 11])
        gathered, grad = r["gather_grad"]
        np.testing.assert_array_equal(gathered, np.repeat([[0.0], [0.0], [1.0], [1.0]], 3, axis=1))
        np.testing.assert_array_equal(grad, weights[2 * rank : 2 * rank + 2])  # its own slice only


def test_model_gradients_are_summed_and_criterion_gradients_averaged(runs):
    for r in _collectives(runs):
        np.testing.assert_array_equal(r["ddp_grad"], [[3.0, 3.0, 3.0]])  # 1 + 2 (DDP's mean: 1.5)
        avg, bias_grad = r["avg_grad"]
        np.testing.assert_array_equal(avg, np.full((2, 2), 1.5))
        assert bias_grad is None


def test_broadcasts(runs):
    for r in _collectives(runs):
        np.testing.assert_array_equal(r["broadcast_module"], np.zeros((2, 2), dtype=np.float32))
        assert r["broadcast_object"] == {"from": 1}
        assert r["all_gather_object"] == [0, 3]


def test_check_same_flags_names_the_differing_flag_on_every_rank(runs):
    res = _collectives(runs)
    for r in res:
        assert r["flags_same"] == "no error"
        assert r["flags_differ"] == (
            "ConfigError: the processes were started with different flags: --bs is 16 on rank 0 "
            "but 32 on rank 1; every rank must get the same command line"
        )
        assert r["flags_extra"].startswith("ConfigError: the processes were started with different flags: ")
        assert "--extra is None on rank 0 but 5 on rank 1" in r["flags_extra"]
        assert "\n" not in r["flags_differ"] + r["flags_extra"]


def test_per_rank_state_in_the_group(runs):
    res = _collectives(runs)
    for rank, r in enumerate(res):
        state, loaded = r["per_rank"]
        assert state == {"per_rank": [{"v": 100}, {"v": 101}]}
        assert loaded == {"own": 100 + rank, "one_rank": 5, "plain": 7}
        n_states, before, after = r["rng"]
        assert n_states == WORLD
        np.testing.assert_array_equal(after, before)
    assert not np.array_equal(res[0]["rng"][1], res[1]["rng"][1])  # per-rank streams differ


# ---- no process group needed --------------------------------------------------------------------------------


class _Batches(torch.utils.data.Sampler):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_rank_slices_partition_each_global_batch_in_order(world):
    batches = [list(range(8)), list(range(100, 108)), [5, 3, 9, 1, 0, 2, 7, 4]]
    sampler = _Batches(batches)
    slices = [list(RankSlice(sampler, Context(rank=r, world_size=world))) for r in range(world)]
    for r in range(world):
        assert len(RankSlice(sampler, Context(rank=r, world_size=world))) == len(batches)
        assert all(len(s) == 8 // world for s in slices[r])
    for step, batch in enumerate(batches):
        assert [i for r in range(world) for i in slices[r][step]] == batch


def test_rank_slice_refuses_an_indivisible_batch():
    with pytest.raises(RuntimeError, match="a batch of 7 cannot be split over 2 processes"):
        list(RankSlice(_Batches([list(range(7))]), Context(rank=0, world_size=2)))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_bounds_partition(world):
    for n in range(10):
        bounds = [distributed.shard_bounds(n, Context(rank=r, world_size=world)) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_check_batch():
    distributed.check_batch(16, Context(rank=0, world_size=4))
    distributed.check_batch(7, distributed.SINGLE)
    with pytest.raises(ConfigError) as err:
        distributed.check_batch(10, Context(rank=1, world_size=4))
    assert str(err.value) == (
        "--bs 10 is the global batch and must be divisible by the 4 processes (e.g. --bs 8)"
    )
    with pytest.raises(ConfigError, match=r"\(e\.g\. --bs 3\)"):
        distributed.check_batch(2, Context(rank=0, world_size=3))


def test_choose_backend():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert distributed.choose_backend("auto", cpu) == "gloo"
    assert distributed.choose_backend("auto", cuda) == "nccl"
    assert distributed.choose_backend("gloo", cpu) == "gloo"
    with pytest.raises(ConfigError) as err:
        distributed.choose_backend("nccl", cpu)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("--dist_backend nccl needs CUDA, but this run trains on cpu")
    with pytest.raises(ConfigError, match="--dist_backend mpi: choose from auto, nccl, gloo"):
        distributed.choose_backend("mpi", cpu)


def test_environment(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.environment() is distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.environment() is distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    ctx = distributed.environment()
    assert ctx == Context(rank=3, world_size=4, local_rank=1, local_world_size=2, backend="pending")
    assert ctx.active and not ctx.is_main
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ConfigError, match=r"\$RANK='two' is not an integer"):
        distributed.environment()


def test_single_process_is_the_identity():
    single = distributed.SINGLE
    assert not single.active and single.is_main
    x = torch.randn(5, 2, requires_grad=True)
    assert distributed.gather(x, single) is x
    assert distributed.gather_shards(x, single) is x
    assert distributed.all_gather_object({"a": 1}, single) == [{"a": 1}]
    assert distributed.broadcast_object(3, single, src=0) == 3
    model = nn.Linear(2, 2)
    assert distributed.wrap_model(model, single, torch.device("cpu")) is model
    assert distributed.unwrap(model) is model
    model.weight.grad = torch.ones(2, 2)
    distributed.average_gradients(model, single)
    torch.testing.assert_close(model.weight.grad, torch.ones(2, 2))
    distributed.check_same_flags({"a": 1}, single)
    assert distributed.init(single, torch.device("cpu"), "nccl", 1.0) is single


def test_per_rank_without_a_group():
    """A single process keeps the plain state; loading a checkpoint of another world size takes
    this rank's entry if there is one, else entry 0."""
    part = _Part(3)
    assert PerRank(part, distributed.SINGLE).state_dict() == {"v": 3}
    ckpt = {"per_rank": [{"v": 10}, {"v": 11}]}
    for ctx, expected in [
        (distributed.SINGLE, 10),
        (Context(rank=1, world_size=2), 11),
        (Context(rank=2, world_size=3), 10),
    ]:
        PerRank(part, ctx).load_state_dict(ckpt)
        assert part.value == expected
    PerRank(part, Context(rank=1, world_size=2)).load_state_dict({"v": 42})  # a single-process state
    assert part.value == 42
