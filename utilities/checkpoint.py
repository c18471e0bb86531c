"""Checkpoints: gathered from the objects that own the state, written atomically, loaded safely.

A checkpoint is a dict ``{part name: part.state_dict()}`` over the run's stateful objects (model,
criterion -- which holds its batch miner --, optimiser, scheduler, sampler, the training loader's
generator, the process RNGs), plus plain bookkeeping (epoch, history, ...). Only tensors and plain
Python are stored, so it loads with ``torch.load(weights_only=True)``.

Every failure a user can meet is one line (:class:`~utilities.errors.ConfigError`): a full disk
while writing ("cannot write FILE: no space left on /mount"), a truncated, foreign or code-carrying
file while reading, weights that do not fit the model (the first mismatching tensor is named).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from utilities.errors import ConfigError
from utilities.logger import describe_os_error


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def gather(parts: Mapping[str, Stateful], **extra: Any) -> dict[str, Any]:
    """``{name: part.state_dict()}`` for every part, plus ``extra`` made weights_only-safe."""
    return {**{name: part.state_dict() for name, part in parts.items()}, **plain(extra)}


def restore(
    state: Mapping[str, Any], parts: Mapping[str, Stateful], source: str | Path = "the checkpoint"
) -> None:
    """Load every part's state, in the order of ``parts`` (put the process RNGs last). A part the
    checkpoint lacks, or a state that does not fit its part (other weights' shapes, another
    optimiser layout), is a one-line ConfigError naming ``source`` and the part."""
    for name, part in parts.items():
        if name not in state:
            raise ConfigError(f"{source} has no saved '{name}' (not a checkpoint of this kind of run)")
        if isinstance(part, nn.Module):
            load_weights(part, state[name], f"{source} ('{name}')")
            continue
        try:
            part.load_state_dict(state[name])
        except (RuntimeError, ValueError) as err:
            raise ConfigError(
                f"{source}: the saved '{name}' does not fit this run: {_first_line(err)}"
            ) from None


def load_weights(module: nn.Module, weights: Any, source: str | Path) -> None:
    """``module.load_state_dict(weights)``; weights that do not fit (another architecture, another
    ``--embed_dim``) are a one-line ConfigError naming the first mismatching tensor."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        detail = first_mismatch(module, weights) or _first_line(err)
        raise ConfigError(f"{source} does not fit the model: {detail}") from None


def first_mismatch(module: nn.Module, weights: Any) -> str | None:
    """The first difference between ``module``'s state dict and ``weights``: a tensor of another
    shape, then a tensor the model has and the weights lack, then one the model does not have."""
    if not isinstance(weights, Mapping):
        return f"it holds a {type(weights).__name__}, not a state dict"
    own = module.state_dict()
    for key, value in weights.items():
        if key in own and torch.is_tensor(value) and value.shape != own[key].shape:
            return (
                f"weights '{key}' have shape {list(value.shape)} in the checkpoint, "
                f"{list(own[key].shape)} in the model"
            )
    missing = [k for k in own if k not in weights]
    if missing:
        return f"the model's weights '{missing[0]}' are not in it ({len(missing)} missing)"
    unexpected = [k for k in weights if k not in own]
    if unexpected:
        return f"its weights '{unexpected[0]}' are not in the model ({len(unexpected)} unexpected)"
    return None


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


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 without the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``. The file
    gets the mode of every other file of the run (not mkstemp's 0600); a failed write (full disk,
    quota, read-only mount) leaves the old file, removes the temporary one and is a ConfigError."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {describe_os_error(err, path)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        reason = _write_failure(err, path)
        if reason is None:
            raise
        raise ConfigError(f"cannot write {path}: {reason}") from err


def _write_failure(err: BaseException, path: Path) -> str | None:
    """Why a write failed, if it was the file system: the OSError itself or the one behind torch's
    zip writer ("unexpected pos ..." has the OSError as its context), else None (not a user error)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return describe_os_error(cause, path)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, RuntimeError) and "unexpected pos" in str(err):  # torch's writer, errno lost
        free = shutil.disk_usage(path.parent).free
        return f"the write was cut short ({free / 2**20:.0f} MiB free on the file system)"
    return None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (tensors and plain Python only). A file
    that cannot be read that way (truncated, not a checkpoint, pickled code) is a one-line
    ConfigError naming it -- never torch's advice to load with ``weights_only=False``."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch wraps every weights_only failure in one long text
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            reason = (
                f"it holds a pickled Python object ({found.group(1)}), not only tensors and plain Python; "
                "refused, as loading it could run code"
            )
        else:
            reason = "truncated or not a checkpoint (no tensors-only pickle in it)"
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
    except Exception as err:  # truncated zip, garbage bytes, empty file: torch raises anything
        reason = f"truncated or not a checkpoint ({_first_line(err)})"
    raise ConfigError(f"cannot read checkpoint {path}: {reason}")


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
