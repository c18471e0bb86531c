"""Seeding and device selection."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA); make cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may still draw from the legacy global RNG
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def worker_init_fn(worker_id: int) -> None:
    """Give every DataLoader worker its own seed derived from the loader's seeded generator."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may still draw from the legacy global RNG


def loader_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str, gpu: list[int]) -> torch.device:
    """``auto`` -> the first ``--gpu`` if CUDA is available, else CPU."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from utilities.errors import ConfigError

        raise ConfigError("--device cuda was requested but no CUDA device is available")
    index = gpu[0] if gpu else 0
    if not 0 <= index < torch.cuda.device_count():
        from utilities.errors import ConfigError

        raise ConfigError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) on this machine")
    return torch.device("cuda", index)
