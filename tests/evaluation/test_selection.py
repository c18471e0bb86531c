"""Epoch selection: the first --storage_metrics entry, its ties broken by the next ones in order,
a full tie keeping the earliest epoch; summary.json states the rule and the ties."""

from __future__ import annotations

import math

import pytest

from evaluation.selection import improved, selection_key, selection_rule, summary


def select(history: list[dict | None], names: list[str]) -> int | None:
    """The loop of main.py over a finished history."""
    best, keys = None, []
    for epoch, result in enumerate(history):
        keys.append(selection_key(result, names))
        if improved(keys[:-1], keys[-1]):
            best = epoch
    return best


SATURATED = [  # Recall@1 saturates at epoch 1 while MAP@R still improves until epoch 3
    {"e_recall@1": 0.9, "mAP@R": 0.40},
    {"e_recall@1": 1.0, "mAP@R": 0.50},
    {"e_recall@1": 1.0, "mAP@R": 0.62},
    {"e_recall@1": 1.0, "mAP@R": 0.70},
    {"e_recall@1": 1.0, "mAP@R": 0.65},
]


def test_ties_of_the_first_metric_are_broken_by_the_next():
    assert select(SATURATED, ["e_recall@1"]) == 1  # the earliest of the tied epochs
    assert select(SATURATED, ["e_recall@1", "mAP@R"]) == 3
    assert select(SATURATED, ["mAP@R", "e_recall@1"]) == 3
    # the tie-breaker never overrides a better first metric
    history = [{"a": 0.5, "b": 0.9}, {"a": 0.6, "b": 0.1}]
    assert select(history, ["a", "b"]) == 1


def test_full_ties_keep_the_earliest_and_missing_values_never_win():
    history = [{"a": 1.0, "b": 0.5}, {"a": 1.0, "b": 0.5}, None, {"a": math.nan, "b": 1.0}]
    assert select(history, ["a", "b"]) == 0
    assert select([None, {"a": math.nan}], ["a"]) is None
    # a missing tie-breaker counts as -inf, so a present one wins the tie
    assert select([{"a": 1.0}, {"a": 1.0, "b": 0.0}], ["a", "b"]) == 1
    assert selection_key({"a": 1.0, "b": math.nan}, ["a", "b"]) == (1.0, -math.inf)
    assert selection_key({"a": True}, ["a"]) is None


def test_plain_floats_still_compare_as_before():
    assert improved([0.1, None, math.nan], 0.2) and not improved([0.2], 0.2) and not improved([], None)
    assert improved([], 0.0) and not improved([0.5], math.nan)


@pytest.mark.parametrize(
    ("names", "rule"),
    [
        (["e_recall@1"], "highest e_recall@1; a full tie keeps the earliest epoch"),
        (
            ["mAP@R", "e_recall@1", "nmi"],
            "highest mAP@R, ties broken by e_recall@1, then nmi; a full tie keeps the earliest epoch",
        ),
    ],
)
def test_the_rule_is_stated(names, rule):
    assert selection_rule(names) == rule


def test_summary_records_the_rule_and_the_ties():
    history = {"validation": SATURATED, "testing": [{"e_recall@1": 0.5}] * 5}
    out = summary(history, 3, "validation", "e_recall@1", wall_time=1.0, n_epochs=5, tie_breakers=["mAP@R"])
    assert out["selected_epoch"] == 3 and out["metrics"]["testing"] == {"e_recall@1": 0.5}
    assert (
        out["selection_rule"]
        == "highest e_recall@1, ties broken by mAP@R; a full tie keeps the earliest epoch"
    )
    assert out["selection_ties"] == 4  # epochs 1-4 share Recall@1 = 1.0
    none = summary({"validation": [None]}, None, "validation", "e_recall@1", wall_time=0.0, n_epochs=1)
    assert none["selected_epoch"] is None and none["selection_ties"] == 0
