"""The short console lines of a run: one per epoch, and the selected epoch at the end.

Every metric of every split goes to metrics.csv, summary.json and W&B; the console shows per
evaluated split only ``--console_metrics`` (default: Recall@1, MAP@R, NMI), e.g. ::

    Epoch 3 (3.4s): loss 0.1234, ETA 0:45 | testing R@1 0.8123 MAP@R 0.4567 NMI 0.6543 | ...

A requested recall metric the run does not compute is replaced by the first recall metric it does
compute; the selection metric (the first ``--storage_metrics``) is always shown, and so is an
approximate search's ``search_recall@k`` against exact search, which a table must not hide.
"""

from __future__ import annotations

import metrics
from utilities.progress import format_seconds

DEFAULT_CONSOLE_METRICS = ["e_recall@1", "mAP@R", "nmi"]

LABELS = {"mAP@R": "MAP@R", "nmi": "NMI", "f1": "F1"}
RECALL_PREFIXES = ("e_recall@", "c_recall@")


def label(name: str) -> str:
    """The console label of a metric: ``e_recall@1`` -> ``R@1``, ``c_recall@2`` -> ``cR@2``,
    ``mAP@R`` -> ``MAP@R``, ``nmi`` -> ``NMI``; other names as they are."""
    if name.startswith("e_recall@"):
        return "R@" + name.partition("@")[2]
    if name.startswith("c_recall@"):
        return "cR@" + name.partition("@")[2]
    return LABELS.get(name, name)


def shown_metrics(requested: list[str], computed: list[str], selection: str | None = None) -> list[str]:
    """The metrics of the console line: the ``requested`` ones that are ``computed`` (a missing
    recall metric replaced by the first computed recall metric not shown yet), then ``selection``
    if it is not among them."""
    shown: list[str] = []
    recalls = [m for m in computed if m.startswith(RECALL_PREFIXES)]
    for name in requested:
        if name not in computed and name.startswith(RECALL_PREFIXES):
            name = next((r for r in recalls if r not in shown and r not in requested), "")
        if name in computed and name not in shown:
            shown.append(name)
    if selection and selection in computed and selection not in shown:
        shown.append(selection)
    return shown


def format_short(results: dict, names: list[str]) -> str:
    """``"R@1 0.8123 MAP@R 0.4567 NMI 0.6543"``: the scalar results among ``names``, and any
    ``search_recall@k`` of an approximate search."""
    keys = [*names, *(k for k in results if metrics.is_search_recall(k))]
    return " ".join(
        f"{label(k)} {results[k]:.4f}"
        for k in keys
        if k in results and isinstance(results[k], (int, float)) and not isinstance(results[k], bool)
    )


def epoch_line(
    epoch: int, stats: dict, results: dict[str, dict | None], names: list[str], eta: float | None = None
) -> str:
    """One epoch's line: its seconds (training and evaluation; each is a metrics.csv column), the
    mean loss, the run's ETA, and :func:`format_short` of every split evaluated this epoch."""
    seconds = stats["train_time"] + sum(r.get("eval_time", 0.0) for r in results.values() if r)
    head = f"Epoch {epoch} ({seconds:.1f}s): loss {stats['loss']:.4f}"
    if eta is not None:
        head += f", ETA {format_seconds(eta)}"
    parts = [head] + [f"{split} {format_short(res, names)}" for split, res in results.items() if res]
    return " | ".join(parts)


def selected_line(best_epoch: int, select_on: str, metric: str, testing: dict, names: list[str]) -> str:
    """The run's last line: the selected epoch and its test metrics (:func:`format_short`)."""
    return f"Selected epoch {best_epoch} on {select_on} {metric}; testing: {format_short(testing, names)}"
