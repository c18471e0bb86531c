"""End-to-end runs on a CUDA device (``pytest -m cuda``; skipped without one): training with mixed
precision and channels-last, metrics on the GPU, exact resume, and torchrun with NCCL."""

from __future__ import annotations

import json
import subprocess
import sys

import main
from tests.conftest import requires_cuda
from tests.lifecycle._runs import ROOT, read_rows, tiny_args

CUDA = ("--device", "cuda", "--evaluate_on_gpu", "--amp", "bf16", "--channels_last")


@requires_cuda
def test_cuda_run_with_amp_resumes_exactly(tmp_path):
    """cuDNN is deterministic (utilities/seeding.py), so a run stopped after epoch 0 and resumed on
    the GPU reproduces the uninterrupted GPU run's metrics.csv exactly."""
    main.main(tiny_args(tmp_path, "full", *CUDA, epochs=2))
    main.main(tiny_args(tmp_path, "part", *CUDA, epochs=1))
    main.main(["--resume", str(tmp_path / "digits" / "part"), "--n_epochs", "2"])
    full, part = read_rows(tmp_path / "digits" / "full"), read_rows(tmp_path / "digits" / "part")
    assert part == full
    summary = json.loads((tmp_path / "digits" / "full" / "summary.json").read_text())
    assert summary["metrics"]["testing"]["e_recall@1"] > 0.5  # it trained


@requires_cuda
def test_torchrun_with_nccl_and_sync_bn(tmp_path):
    """One process per GPU over NCCL with SyncBatchNorm (smallcnn has BatchNorm; on a one-GPU
    machine: one process)."""
    import torch

    n = torch.cuda.device_count()
    args = tiny_args(tmp_path, "nccl", "--device", "cuda", "--dist_backend", "nccl", "--sync_bn", epochs=1)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", "29533",
         str(ROOT / "main.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    stored = json.loads((tmp_path / "digits" / "nccl" / "args.json").read_text())["args"]
    assert stored["process_group"] == "nccl" and stored["world_size"] == n
