"""Checkpoint/epoch selection and the run summary.

The epoch is selected on the ``validation`` split when there is one (``--use_tv_split``); without
it, on ``testing``, which leaks test information into model selection (the reference study's
default). ``summary.json`` records which split was used and flags test-set selection.

Rule: the highest value of the first ``--storage_metrics`` entry; epochs that tie on it are
compared on the next entries in order (e.g. ``--storage_metrics e_recall@1 mAP@R``: a saturated
Recall@1 no longer picks the first epoch that reached it); a tie on all of them keeps the earliest
epoch. ``summary.json`` states the rule (``selection_rule``) and how many epochs tied on the first
metric at the selected value (``selection_ties``).
"""

from __future__ import annotations

import math


def selection_split(splits: list[str]) -> str:
    return "validation" if "validation" in splits else "testing"


Key = tuple[float, ...]


def selection_key(result: dict | None, names: list[str]) -> Key | None:
    """One epoch's values of the ``--storage_metrics`` ``names`` (a missing or NaN tie-breaker
    counts as -inf); None when the split was not evaluated or the first value is missing/NaN."""
    if not result:
        return None
    values = [result.get(n) for n in names]
    if not _finite(values[0]):
        return None
    return tuple(float(v) if _finite(v) else -math.inf for v in values)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def improved(history: list[Key | float | None], value: Key | float | None) -> bool:
    """True if ``value`` beats every earlier value (higher is better; keys compare in order, so
    later entries only break ties of the earlier ones; a full tie keeps the earlier epoch)."""
    value = _as_key(value)
    if value is None:
        return False
    previous = [k for k in map(_as_key, history) if k is not None]
    return not previous or value > max(previous)


def _as_key(v: Key | float | None) -> Key | None:
    if v is None:
        return None
    if isinstance(v, tuple):
        return v if v and _finite(v[0]) else None
    return (float(v),) if _finite(v) else None


def selection_rule(names: list[str]) -> str:
    rule = f"highest {names[0]}"
    if len(names) > 1:
        rule += ", ties broken by " + ", then ".join(names[1:])
    return rule + "; a full tie keeps the earliest epoch"


def summary(
    history: dict[str, list[dict | None]],
    best_epoch: int | None,
    select_on: str,
    select_metric: str,
    *,
    wall_time: float,
    n_epochs: int,
    tie_breakers: list[str] | None = None,
) -> dict:
    """``summary.json``: the selected epoch, where and how it was selected, and every split's
    metrics at that epoch."""
    on_test = select_on == "testing"
    chosen = history.get(select_on, [])
    best = chosen[best_epoch] if best_epoch is not None and best_epoch < len(chosen) else None
    ties = sum(1 for r in chosen if r and best and r.get(select_metric) == best.get(select_metric))
    return {
        "selected_epoch": best_epoch,
        "selection_split": select_on,
        "selection_metric": select_metric,
        "selection_rule": selection_rule([select_metric, *(tie_breakers or [])]),
        "selection_ties": ties,
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
