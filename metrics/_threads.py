"""Thread counts of the evaluation: torch's setting is the ceiling, each stage takes what its size
pays for, and the numba kernels follow torch's count without side effects on it.

**Why small stages run on one thread.** Every parallel region of OpenMP (torch's ops, MKL's BLAS
and LAPACK, the numba kernels: one runtime, see below) ends in a barrier that waits for the
slowest thread. On a machine whose cores are shared with other processes, that thread is often
descheduled, and with GNU OpenMP's default wait policy the threads that are done *spin* at the
barrier, holding the core the late thread needs, so a region costs a scheduler time slice instead
of microseconds. A stage made of many small regions then pays that once per region: measured on
the 2-core development machine under load, a 1M-element ``add_`` took 0.7 ms on one thread and 19
ms on two, a CUB-scale k-means (hundreds of small regions) 0.8 s and 4.6 s, and ``eigvalsh`` of a
128×128 matrix (LAPACK's tridiagonalisation: many small BLAS calls, each a region) ~0.6 ms and
20-40 ms.
So :func:`stage_threads` gives a stage one thread per :data:`WORK_PER_THREAD` multiply-adds, never
more than ``torch.get_num_threads()``: CUB/CARS-scale k-means, the spectrum's eigen-decomposition
and the class statistics run on one thread, the ranking pass and SOP-scale k-means (regions of
millions of multiply-adds each) on all of torch's threads. Entry points should also set
``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (waiting threads then sleep and give the core
back): the large stages, which keep their threads, degrade gracefully too.

The choice depends only on the problem's size and torch's setting, so results stay deterministic.
The ranks and the k-means clusters come out the same on one and two threads (MKL splits a matrix
product over its rows and columns, not over the summed dimension; only a one-row product rounds
differently, which could flip an exact near-tie); the spectrum (a float64 Gram matrix and its
eigenvalues) differs between thread counts in the last bits.

**One OpenMP runtime.** numba's OpenMP threading layer resolves its OpenMP calls to the runtime
torch loaded (one worker pool, not two spinning against each other); it is preferred over TBB,
which would start a second pool. Its first parallel launch sets that runtime's thread count to
``NUMBA_NUM_THREADS`` (the core count). Afterwards torch would run with that many threads too: a
process started with ``OMP_NUM_THREADS=1`` (torchrun's default) silently trains on all cores after
its first evaluation, which changes float summation order, so a resumed run (which has not
evaluated yet) no longer reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch

# multiply-adds (or element operations) a stage needs per thread before it gets another one:
# ~0.1-0.3 s of one core, so each region of such a stage is large next to a scheduler time slice
WORK_PER_THREAD = 2**30
_evaluation = threading.local()  # .ceiling: torch's count when the outermost stage began


def threads_for(work: float, limit: int | None = None) -> int:
    """Threads for a stage of ``work`` multiply-adds: one per :data:`WORK_PER_THREAD`, at least
    one, at most ``limit`` (default: ``torch.get_num_threads()``)."""
    cap = torch.get_num_threads() if limit is None else limit
    return max(1, min(cap, int(work // WORK_PER_THREAD)))


@cache
def _can_set_threads() -> bool:
    # torch's native (non-OpenMP) backend refuses, with a warning, to change its count once it
    # has run parallel work; there the stages keep the caller's count
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


@contextmanager
def stage_threads(work: float, device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block on :func:`threads_for` ``(work)`` torch threads (OpenMP, MKL and, through
    :func:`numba_threads_like_torch`, the numba kernels), then restore torch's count. Yields the
    count. The ceiling is torch's count when the outermost stage began: a nested stage may take
    more threads than the one around it (a large ranking pass inside a one-thread block of small
    metric ops) but never more than the caller set. A stage on another ``device`` than the CPU
    leaves the count alone."""
    before = torch.get_num_threads()
    outermost = getattr(_evaluation, "ceiling", None) is None
    if outermost:
        _evaluation.ceiling = before
    try:
        if torch.device(device).type == "cpu" and _can_set_threads():
            threads = threads_for(work, limit=_evaluation.ceiling)
            if threads != before:
                torch.set_num_threads(threads)
        yield torch.get_num_threads()
    finally:
        if outermost:
            _evaluation.ceiling = None
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def numba_threads_like_torch() -> Iterator[None]:
    """Run the block's numba kernels on torch's thread count, and leave torch's count as it was."""
    import numba  # lazy: only the kernels, which import numba anyway, come here

    if numba.config.THREADING_LAYER == "default":  # before the first launch picks a layer
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
