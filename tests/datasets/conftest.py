"""One intra-op thread for these CPU tests: on a shared 2-core machine, OpenMP threads that
spin-wait on each other make small convolutions 20× slower; results do not depend on it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
