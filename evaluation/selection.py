"""Checkpoint/epoch selection and the run summary.

The epoch is selected on the ``validation`` split when there is one (``--use_tv_split``); without
it, on ``testing``, which leaks test information into model selection (the reference study's
default). ``summary.json`` records which split was used and flags test-set selection.
"""

from __future__ import annotations

import math


def selection_split(splits: list[str]) -> str:
    return "validation" if "validation" in splits else "testing"


def improved(history: list[float], value: float) -> bool:
    """True if ``value`` beats every earlier finite value (higher is better)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    previous = [v for v in history if v is not None and not math.isnan(v)]
    return not previous or value > max(previous)


def summary(
    history: dict[str, list[dict | None]],
    best_epoch: int | None,
    select_on: str,
    select_metric: str,
    *,
    wall_time: float,
    n_epochs: int,
) -> dict:
    """``summary.json``: the selected epoch, where and how it was selected, and every split's
    metrics at that epoch."""
    on_test = select_on == "testing"
    return {
        "selected_epoch": best_epoch,
        "selection_split": select_on,
        "selection_metric": select_metric,
        "selected_on_test_split": on_test,
        "note": (
            "epoch selected on the TEST split (no --use_tv_split): test metrics are optimistic"
            if on_test
            else "epoch selected on the validation split"
        ),
        "metrics": {s: h[best_epoch] if best_epoch is not None else None for s, h in history.items()},
        "wall_time": wall_time,
        "n_epochs": n_epochs,
    }
