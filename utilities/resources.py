"""Compute accounting of a run: throughput and peak memory, the ``compute`` entry of summary.json.

metrics.csv holds per epoch ``train_images_per_s`` (training row: the epoch's images over its
training time) and ``eval_images_per_s`` (each evaluation row: the split's images over its
``eval_time``, embedding and metrics). :func:`compute_summary` gives summary.json's ``compute``:

* ``train_images_per_s``, ``eval_images_per_s``: the mean of the metrics.csv column over every
  row that has it (a resumed run's restored rows included; null when there is none);
* ``peak_host_mem_mb``: the peak resident set size of the process (``getrusage``; MiB);
* ``peak_gpu_mem_mb``: ``torch.cuda.max_memory_allocated`` of the training device (MiB; null on
  a CPU);
* ``wall_time_s``: the run's wall time (a resumed run's earlier parts included).

Under torchrun rank 0 records the global numbers: images/s are the images of all ranks over the
slowest rank's time (training; evaluation is timed on rank 0 across the collective embedding), the
host memory is the sum of every rank's peak (the ranks of a node share its memory) and the GPU
memory the largest rank's peak (each rank has its own device). Peaks survive ``--resume``: the
checkpoint keeps them (:func:`peak_memory` with ``previous``).
"""

from __future__ import annotations

import math
import resource
import sys
from typing import Any

import torch

from utilities import distributed

MIB = 1024 * 1024


def host_peak_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def gpu_peak_mb(device: torch.device | str) -> float | None:
    """Peak memory torch allocated on CUDA ``device`` in MiB; None for any other device."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / MIB


def peak_memory(
    device: torch.device | str,
    dist: distributed.Context = distributed.SINGLE,
    previous: dict[str, float | None] | None = None,
) -> dict[str, float | None]:
    """``{"host_mb", "gpu_mb"}``: the run's peaks so far (the sum of the ranks' host peaks and
    the largest rank's GPU peak under torchrun; at least ``previous``, the peaks a resumed run's
    checkpoint kept). A collective under torchrun: every rank calls it."""
    ranks = distributed.all_gather_object((host_peak_mb(), gpu_peak_mb(device)), dist)
    host = sum(h for h, _ in ranks)
    gpus = [g for _, g in ranks if g is not None]
    gpu = max(gpus) if gpus else None
    previous = previous or {}
    return {"host_mb": _max(host, previous.get("host_mb")), "gpu_mb": _max(gpu, previous.get("gpu_mb"))}


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


def epoch_rate(images: int, seconds: float, dist: distributed.Context = distributed.SINGLE) -> float:
    """Images per second of one epoch's training, over every rank: the images of all ranks over
    the slowest rank's time. A collective under torchrun."""
    ranks = distributed.all_gather_object((images, seconds), dist)
    total, slowest = sum(n for n, _ in ranks), max(t for _, t in ranks)
    return total / slowest if slowest > 0 else math.nan


def column_mean(rows: list[dict[str, Any]], column: str) -> float | None:
    """The mean of ``column`` over the rows that have a finite value of it (None if none do)."""
    values = [float(r[column]) for r in rows if _finite(r.get(column))]
    return sum(values) / len(values) if values else None


def _finite(v: Any) -> bool:
    try:
        return v is not None and v != "" and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def compute_summary(rows: list[dict[str, Any]], peaks: dict[str, float | None], wall_time: float) -> dict:
    """summary.json's ``compute`` from the run's metrics.csv rows and :func:`peak_memory`."""
    return {
        "train_images_per_s": column_mean(rows, "train_images_per_s"),  # training rows
        "eval_images_per_s": column_mean(rows, "eval_images_per_s"),  # evaluation rows, every split
        "peak_host_mem_mb": peaks.get("host_mb"),
        "peak_gpu_mem_mb": peaks.get("gpu_mb"),
        "wall_time_s": wall_time,
    }
