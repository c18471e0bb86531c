"""The numba kernels leave torch's thread count alone (numba's OpenMP layer used to raise it to the
core count at its first launch, so a process started with OMP_NUM_THREADS=1, e.g. by torchrun,
trained on all cores after its first evaluation and a resumed run no longer matched)."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_numba_kernels_keep_torch_single_threaded_in_a_fresh_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["1", "1", "1"]
