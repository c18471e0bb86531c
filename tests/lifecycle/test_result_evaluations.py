"""Result_Evaluations.py on fabricated run folders with known values (mean, ddof=1 std, the
selected-epoch rule vs the study's per-seed max over epochs), and on a fake W&B API."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import Result_Evaluations as RE


def fabricate(
    root: Path,
    dataset: str,
    name: str,
    seed: int,
    group: str | None,
    curves: dict,
    selected: int,
    selection_split: str = "validation",
    summary: bool = True,
    **summary_extra,
) -> Path:
    """A run folder: ``curves`` = {split: {metric: [value per epoch]}}; summary at ``selected``."""
    folder = root / dataset / name
    folder.mkdir(parents=True)
    args = {"dataset": dataset, "seed": seed, "group": group or "Sample_Group", "loss": "margin"}
    (folder / "args.json").write_text(json.dumps({"args": args}))
    n_epochs = len(next(iter(next(iter(curves.values())).values())))
    rows = []
    for epoch in range(n_epochs):
        rows.append({"epoch": epoch, "split": "training", "loss": 1.0 / (epoch + 1)})
        for split, metrics in curves.items():
            rows.append({"epoch": epoch, "split": split, **{m: v[epoch] for m, v in metrics.items()}})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if summary:
        metrics = {s: {m: v[selected] for m, v in c.items()} for s, c in curves.items()}
        body = {
            "selected_epoch": selected,
            "selection_split": selection_split,
            "metrics": metrics,
            **summary_extra,
        }
        (folder / "summary.json").write_text(json.dumps(body))
    return folder


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for seed, x in zip((0, 1, 2), (0.5, 0.6, 0.7), strict=True):
        curves = {
            "testing": {"e_recall@1": [x - 0.1, x, x + 0.05], "nmi": [0.9 - seed * 0.1, 0.3, 0.2]},
            "validation": {"e_recall@1": [0.1, 0.9, 0.5]},
            "evaluation": {"rho_spectrum@2": [0.1, 0.2 + seed, 0.3]},
        }
        fabricate(
            root, "cub200", f"CUB_Margin_b12_Distance_s{seed}", seed, "CUB_Margin_b12_Distance", curves, 1
        )
    fabricate(root, "cub200", "CUBreg_Margin_b12_Distance_3_s0", 0, "CUBreg_Margin_b12_Distance_3",
              {"testing": {"e_recall@1": [0.8, 0.85]}}, 0, selection_split="testing")  # fmt: skip
    # no group flag: grouped by the run name minus exactly "_s<seed>" ("_s" inside the name is kept)
    for seed in (3, 4):
        fabricate(
            root, "cars196", f"my_sweep_s1_s{seed}", seed, None, {"testing": {"e_recall@1": [0.2, 0.4]}}, 1
        )
    # left out: an unfinished run and an --evaluate_only folder
    fabricate(root, "cub200", "CUB_Margin_b12_Distance_s9", 9, "CUB_Margin_b12_Distance",
              {"testing": {"e_recall@1": [0.0]}}, 0, summary=False)  # fmt: skip
    fabricate(root, "cub200", "CUB_Margin_b12_Distance_s0_eval", 0, "CUB_Margin_b12_Distance",
              {"testing": {"e_recall@1": [0.0]}}, 0, evaluate_only=True)  # fmt: skip
    return root


def _row(rows, group, protocol=RE.SELECTED):
    (row,) = [r for r in rows if r["group"] == group and r["protocol"] == protocol]
    return row


def test_a_truncated_summary_is_skipped_with_its_name(runs_root, capsys):
    complete = len(RE.load_local_runs(runs_root))
    broken = sorted(runs_root.glob("**/summary.json"))[0]
    broken.write_text('{"selected_epoch": 3, "metr')  # a write cut short
    assert len(RE.load_local_runs(runs_root)) == complete - 1
    assert str(broken.parent) in capsys.readouterr().out


def test_selected_epoch_mean_and_sample_std(runs_root):
    rows = RE.aggregate(RE.load_local_runs(runs_root), RE.SELECTED)
    row = _row(rows, "CUB_Margin_b12_Distance")
    assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2"
    assert row["testing/e_recall@1|mean"] == pytest.approx(0.6)
    assert row["testing/e_recall@1|std"] == pytest.approx(0.1)  # ddof=1 (ddof=0 would give 0.0816)
    assert row["testing/nmi|mean"] == pytest.approx(0.3) and row["testing/nmi|std"] == pytest.approx(0.0)
    assert row["evaluation/rho_spectrum@2|mean"] == pytest.approx(1.2)
    assert row["epoch|mean"] == 1 and row["selection_split"] == "validation"
    assert row["method"] == "Margin (D, β=1.2)" and row["regularised"] is False


def test_study_protocol_is_the_per_seed_max_of_each_metric_separately(runs_root):
    rows = RE.aggregate(RE.load_local_runs(runs_root), RE.MAX_OVER_EPOCHS)
    row = _row(rows, "CUB_Margin_b12_Distance", RE.MAX_OVER_EPOCHS)
    assert row["testing/e_recall@1|mean"] == pytest.approx(0.65)  # epoch 2 of every seed
    assert row["testing/nmi|mean"] == pytest.approx(0.8)  # epoch 0: another epoch than R@1's maximum
    assert row["testing/nmi|std"] == pytest.approx(0.1)
    assert row["epoch|mean"] == 2


def test_grouping_and_exclusions(runs_root):
    rows = RE.aggregate(RE.load_local_runs(runs_root), RE.SELECTED)
    assert {(r["dataset"], r["group"], r["n_seeds"]) for r in rows} == {
        ("cub200", "CUB_Margin_b12_Distance", 3), ("cub200", "CUBreg_Margin_b12_Distance_3", 1),
        ("cars196", "my_sweep_s1", 2),
    }  # fmt: skip
    reg = _row(rows, "CUBreg_Margin_b12_Distance_3")
    assert reg["method"] == "R-Margin (D, β=1.2)" and reg["regularised"] is True
    assert math.isnan(reg["testing/e_recall@1|std"])  # one seed: no std


def test_tables_and_figures(runs_root, tmp_path):
    out = tmp_path / "tables"
    RE.main(["--runs", str(runs_root), "--out", str(out)])
    cub = (out / "table_cub200.tex").read_text()
    assert (
        "Margin (D, $\\beta$=1.2) & $60.00\\pm10.00$ & - & - & - & $30.00\\pm0.00$ & $1.00\\pm0.00$ & 3 \\\\"
        in cub
    )
    # selected on test: flagged; the best R@1 of the two methods in bold
    assert "R-Margin (D, $\\beta$=1.2)$^\\dagger$ & $\\mathbf{80.00}$ (n=1)" in cub
    assert "$65.00\\pm10.00$" in (out / "table_cub200_max_over_epochs.tex").read_text()
    shared = (out / "table_shared.tex").read_text()
    assert " & \\multicolumn{2}{c}{CUB200-2011} & \\multicolumn{2}{c}{CARS196} \\\\" in shared
    assert "Method & R@1 & NMI & R@1 & NMI \\\\" in shared
    assert "my sweep s1 & - & - & $40.00\\pm0.00$ & - \\\\" in shared
    lines = shared.splitlines()  # baselines before the R- variants
    assert lines.index(next(x for x in lines if x.startswith("Margin"))) < lines.index(
        next(x for x in lines if x.startswith("R-"))
    )
    md = (out / "results.md").read_text()
    assert "| Margin (D, β=1.2) | 60.00 ± 10.00 |" in md and "max over epochs (test)" in md
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6  # 3 groups × 2 protocols
    for name in (
        "metric_correlation_matrix",
        "comp_metric_relation",
        "Detailed_Rel_Recall_Rho_CUB200",
        "FirstPage",
    ):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0


def test_colours_are_a_function_of_the_name():
    assert RE.colour("Margin (D, β=1.2)") == RE.colour("Margin (D, β=1.2)")
    assert len({RE.colour(m) for m in RE.PRETTY.values()}) > 5


class _FakeRun:
    def __init__(self, name, config, summary, history):
        self.name, self.config, self.summary, self._history = name, config, summary, history

    def scan_history(self):
        return iter(self._history)


class _FakeApi:
    def __init__(self, runs):
        self._runs = runs

    def runs(self, project):
        assert project == "me/RevisitDML"
        return self._runs


def test_wandb_source_reads_what_main_logs():
    """Keys as utilities/logger.py writes them: history "<split>/<metric>" + "epoch"; the summary
    flattened ("metrics/<split>/<metric>")."""
    runs = [
        _FakeRun(f"CUB_MS_s{seed}", {"dataset": "cub200", "seed": seed, "group": "CUB_MS", "_wandb": {}},
                 {"selected_epoch": 0, "selection_split": "testing", "metrics/testing/e_recall@1": r1},
                 [{"epoch": 0, "testing/e_recall@1": r1}, {"epoch": 0, "training/loss": 1.0},
                  {"epoch": 1, "testing/e_recall@1": r1 + 0.1}])
        for seed, r1 in ((0, 0.4), (1, 0.6))
    ] + [_FakeRun("crashed", {"dataset": "cub200", "seed": 2}, {}, [])]  # fmt: skip
    loaded = RE.load_wandb_runs("me/RevisitDML", api=_FakeApi(runs))
    assert [r.name for r in loaded] == ["CUB_MS_s0", "CUB_MS_s1"]
    (sel,) = RE.aggregate(loaded, RE.SELECTED)
    assert sel["testing/e_recall@1|mean"] == pytest.approx(0.5)
    assert sel["testing/e_recall@1|std"] == pytest.approx(math.sqrt(0.02))
    (mx,) = RE.aggregate(loaded, RE.MAX_OVER_EPOCHS)
    assert mx["testing/e_recall@1|mean"] == pytest.approx(0.6) and mx["epoch|mean"] == 1
    assert sel["method"] == "Multisimilarity"
