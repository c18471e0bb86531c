"""Seeding, the process-wide RNG states (saved in checkpoints) and device selection."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from utilities.errors import ConfigError


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
    """``auto`` -> the first ``--gpu`` if CUDA is available, else CPU. A ``--gpu`` other than the
    default 0 on a machine without CUDA is an error (it would silently train on the CPU)."""
    index = gpu[0] if gpu else 0
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if device == "cuda":
            raise ConfigError("--device cuda was requested but no CUDA device is available")
        if index != 0:
            raise ConfigError(f"--gpu {index}: this machine has no CUDA device (use --device cpu)")
        return torch.device("cpu")
    if not 0 <= index < torch.cuda.device_count():
        raise ConfigError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) on this machine")
    return torch.device("cuda", index)


def rng_state() -> dict[str, Any]:
    """python, numpy, torch CPU and CUDA RNG states as tensors / plain Python (weights_only-safe)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what third-party code draws from
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class GlobalRNG:
    """The process-wide RNGs as one checkpointable object (``state_dict`` / ``load_state_dict``)."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class GeneratorState:
    """A ``torch.Generator`` (e.g. a DataLoader's) as a checkpointable object."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def state_dict(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def load_state_dict(self, state: torch.Tensor | None) -> None:
        if state is not None and self.generator is not None:
            self.generator.set_state(state)
