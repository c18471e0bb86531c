"""Fault injection for the lifecycle tests: SIGKILL the run at a named point.

Points used by ``main.py``: ``train:<epoch>:<step>`` (before a training step, i.e. mid-epoch),
``logged:<epoch>`` (metrics.csv written, checkpoint not yet) and ``saved:<epoch>`` (after the
epoch's checkpoints). Everything here is a no-op unless ``$DML_TEST_KILL_AT`` is set; under
torchrun ``$DML_TEST_KILL_RANK`` limits the kill to that rank (the others are then stopped by
torchrun or by the collective timeout).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from typing import Any

KILL_ENV = "DML_TEST_KILL_AT"
KILL_RANK_ENV = "DML_TEST_KILL_RANK"


def kill_point(name: str) -> None:
    """SIGKILL this process when ``$DML_TEST_KILL_AT`` equals ``name`` (and, if
    ``$DML_TEST_KILL_RANK`` is set, this process is that rank: torchrun's ``$RANK``)."""
    rank = os.environ.get(KILL_RANK_ENV)
    if os.environ.get(KILL_ENV) == name and (rank is None or rank == os.environ.get("RANK", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


class KillableLoader:
    """Wraps the training loader to call :func:`kill_point` before each step."""

    def __init__(self, loader: Any, epoch: int) -> None:
        self.loader, self.epoch = loader, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for step, batch in enumerate(self.loader):
            kill_point(f"train:{self.epoch}:{step}")
            yield batch


def train_iterable(loader: Any, epoch: int) -> Iterable[Any]:
    """``loader`` itself, or wrapped in :class:`KillableLoader` when the hook is armed."""
    return KillableLoader(loader, epoch) if os.environ.get(KILL_ENV) else loader
