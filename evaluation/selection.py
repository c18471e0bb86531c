"""Checkpoint/epoch selection (DESIGN.md §5).

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
