"""The numba kernels' thread count, without side effects on torch's.

numba's OpenMP threading layer shares the OpenMP runtime with torch, and its first parallel launch
sets that runtime's thread count to ``NUMBA_NUM_THREADS`` (the core count). Afterwards torch runs
with that many threads too: a process started with ``OMP_NUM_THREADS=1`` (torchrun's default)
silently trains on all cores after its first evaluation, which changes float summation order, so
a resumed run (which has not evaluated yet) no longer reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import torch


@contextmanager
def numba_threads_like_torch() -> Iterator[None]:
    """Run the block's numba kernels on torch's thread count, and leave torch's count as it was."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
