"""Checkpoints: gathered from the objects that own the state, written atomically, loaded safely.

A checkpoint is a dict ``{part name: part.state_dict()}`` over the run's stateful objects (model,
criterion -- which holds its batch miner --, optimiser, scheduler, sampler, the training loader's
generator, the process RNGs), plus plain bookkeeping (epoch, history, ...). Only tensors and plain
Python are stored, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def gather(parts: Mapping[str, Stateful], **extra: Any) -> dict[str, Any]:
    """``{name: part.state_dict()}`` for every part, plus ``extra`` made weights_only-safe."""
    return {**{name: part.state_dict() for name, part in parts.items()}, **plain(extra)}


def restore(state: Mapping[str, Any], parts: Mapping[str, Stateful]) -> None:
    """Load every part's state, in the order of ``parts`` (put the process RNGs last)."""
    for name, part in parts.items():
        part.load_state_dict(state[name])


def plain(x: Any) -> Any:
    """Numpy scalars/arrays -> Python/tensors, so bookkeeping is weights_only-loadable."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, np.generic):
        return x.item()
    return x


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (tensors and plain Python only)."""
    return torch.load(path, map_location=map_location, weights_only=True)
