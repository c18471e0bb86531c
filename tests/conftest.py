"""Shared test fixtures. The repository root is put on sys.path so tests import the packages."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# fixed BLAS thread count: the same float rounding under load (see main.py)
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import pytest
import torch

import parameters

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires_cuda(test):
    """Mark ``test`` as a CUDA test (``pytest -m cuda`` selects them all) that is skipped without one."""
    return pytest.mark.cuda(_no_cuda(test))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Folders of small-tensor CPU tests run with one intra-op thread: on a loaded 2-core machine OpenMP
# threads spin-waiting on each other make tiny ops and convolutions up to 20x slower; no result
# depends on the thread count.
ONE_THREAD_DIRS = {"architectures", "batch_mining", "datasampler", "datasets"}


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread(request):
    if request.path.parent.name not in ONE_THREAD_DIRS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def default_opt() -> argparse.Namespace:
    """The full default namespace (every global and plugin flag), as main.py would see it."""

    return parameters.parse(["--dataset", "digits"])


def make_batch(
    n_classes: int = 8,
    per_class: int = 4,
    dim: int = 16,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (B, D) batch with ``per_class`` samples of each of ``n_classes`` classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_classes * per_class, dim, generator=g, dtype=dtype)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return x, labels
