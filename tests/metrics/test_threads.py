"""Thread counts of the evaluation (metrics/_threads.py).

* Each stage takes threads by its size and never more than torch's setting, so small problems do
  not pay for a thread pool (on shared cores a 2-thread region waits for a descheduled thread) and
  one evaluation never oversubscribes; torch's setting is restored afterwards, also on errors.
* The numba kernels leave torch's thread count alone (numba's OpenMP layer used to raise it to the
  core count at its first launch, so a process started with OMP_NUM_THREADS=1, e.g. by torchrun,
  trained on all cores after its first evaluation and a resumed run no longer matched).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numba
import pytest
import torch

import metrics
from metrics import _threads
from metrics.context import EvalContext
from tests.conftest import ROOT

SCRIPT = """
import torch, metrics
x = torch.nn.functional.normalize(torch.randn(600, 16, generator=torch.Generator().manual_seed(0)), dim=1)
y = torch.arange(600) % 7
before = torch.get_num_threads()
metrics.compute(["mAP@R", "e_recall@1"], x, y, backend="numba")
after_ranking = torch.get_num_threads()
metrics.compute(["nmi"], x, y)
print(before, after_ranking, torch.get_num_threads())
"""

WPT = _threads.WORK_PER_THREAD


def test_numba_kernels_keep_torch_single_threaded_in_a_fresh_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["1", "1", "1"]


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_threads_for_grows_with_the_work_and_stops_at_torchs_setting(four_threads):
    assert _threads.threads_for(0) == 1
    assert _threads.threads_for(WPT - 1) == 1  # below one thread's share: no pool
    assert _threads.threads_for(2 * WPT - 1) == 1  # a second thread needs a full share of its own
    assert _threads.threads_for(2 * WPT) == 2
    assert _threads.threads_for(3 * WPT) == 3
    assert _threads.threads_for(100 * WPT) == 4  # torch's setting is the ceiling
    assert _threads.threads_for(100 * WPT, limit=2) == 2
    torch.set_num_threads(1)
    assert _threads.threads_for(100 * WPT) == 1


def test_stage_sizes_of_the_benchmark_scales():
    """At D = 128 on 2 threads: CUB/CARS k-means, the spectrum's eigen-decomposition and the class
    statistics run on one thread; every ranking pass from CUB scale up and SOP/iNat k-means on two."""
    d, two = 128, 2

    def threads(work):
        return _threads.threads_for(work, limit=two)

    for n, classes in ((5924, 100), (8131, 98)):  # CUB, CARS
        assert threads(n * n * d) == two  # ranking pass
        assert threads(n * classes * d) == 1  # one k-means assignment pass
        assert threads(n * d * d) == 1  # Gram matrix of the spectrum
    for n, classes in ((60502, 11316), (136093, 2452)):  # SOP, iNaturalist
        assert threads(n * n * d) == two
        assert threads(n * classes * d) == two
    assert threads(d**3) == 1  # eigvalsh of the 128×128 Gram matrix
    assert threads(1024**3) == 1


def test_stage_threads_sets_lowers_and_restores(four_threads):
    with _threads.stage_threads(0) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4
    with _threads.stage_threads(100 * WPT) as n:
        assert n == torch.get_num_threads() == 4
        with _threads.stage_threads(2 * WPT) as inner:
            assert inner == 2
        assert torch.get_num_threads() == 4
    with _threads.stage_threads(0):  # small ops around a large nested stage (a ranking pass)
        with _threads.stage_threads(100 * WPT) as inner:
            assert inner == 4  # back up to the caller's setting, never beyond
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4
    with pytest.raises(RuntimeError), _threads.stage_threads(0):
        raise RuntimeError("a failing stage")
    assert torch.get_num_threads() == 4
    with _threads.stage_threads(0, "cuda") as n:  # a GPU stage leaves the CPU count alone
        assert n == 4


def _spy(monkeypatch) -> tuple[list[int], list[int]]:
    """Record every thread count set on torch and on numba during the test."""
    torch_calls: list[int] = []
    numba_calls: list[int] = []
    set_torch, set_numba = torch.set_num_threads, numba.set_num_threads

    def torch_spy(n):
        torch_calls.append(n)
        set_torch(n)

    def numba_spy(n):
        numba_calls.append(n)
        set_numba(n)

    monkeypatch.setattr(torch, "set_num_threads", torch_spy)
    monkeypatch.setattr(numba, "set_num_threads", numba_spy)
    return torch_calls, numba_calls


NAMES = ["e_recall@1", "mAP@R", "nmi", "f1", "c_nmi", "dists@intra", "rho_spectrum@1"]


def _data(n=600, dim=16, classes=7):
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    return x, torch.arange(n) % classes


@pytest.mark.parametrize(
    ("share", "wrapped"),
    [(WPT, False), (2**10, False), (2**10, True)],
    ids=["small stages", "forced to two threads", "inside a one-thread block"],
)
def test_one_evaluation_never_exceeds_torchs_setting(monkeypatch, share, wrapped):
    """Spy on every thread-count change while the whole metric set runs through both numba kernels:
    no stage goes above the caller's setting (2), also when the evaluation runs inside a one-thread
    stage (as the metrics' own small ops may), and the setting is back afterwards."""
    monkeypatch.setattr(_threads, "WORK_PER_THREAD", share)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch_calls, numba_calls = _spy(monkeypatch)
        with _threads.stage_threads(0) if wrapped else contextlib.nullcontext():
            metrics.compute(NAMES, *_data(), backend="numba")
        after = torch.get_num_threads()
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)
    assert after == 2
    assert numba_calls, "the numba kernels ran"
    assert max(torch_calls + numba_calls) <= 2
    if share == WPT:  # 600 points: every stage is small, no kernel runs on two threads
        assert set(numba_calls) == {1}
    else:
        assert 2 in numba_calls


def test_results_do_not_depend_on_the_stage_thread_counts(monkeypatch):
    """The ranks and the k-means clusters are the same whether the stages run on one thread or on
    torch's two (the spectrum may differ in the last bits: float64 sums in another order)."""
    x, y = _data(3000, 32, 40)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = {}
        for share in (2**60, 1):  # every stage on one thread / on two
            monkeypatch.setattr(_threads, "WORK_PER_THREAD", share)
            ctx = EvalContext(x, y, backend="numba", seed=3)
            ctx.request_ranks(ctx.max_relevant)
            out[share] = (ctx.ranks(), ctx.clusters(), ctx.clusters("cosine"))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(out[2**60], out[1], strict=True):
        assert torch.equal(a, b)
