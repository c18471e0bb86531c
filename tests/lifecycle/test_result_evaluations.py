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
    RE.main(["--runs", str(runs_root), "--out", str(out), "--ci", "none"])  # mean ± std (ddof=1)
    cub = (out / "table_cub200.tex").read_text()
    # R@1 is the only rank both CUB groups recorded; then F1, MAP@R, NMI
    assert "Method & R@1 & F1 & MAP@R & NMI & Epoch & Seeds \\\\" in cub
    assert (
        "Margin (D, $\\beta$=1.2) & $60.00\\pm10.00$ & - & - & $30.00\\pm0.00$ & $1.00\\pm0.00$ & 3 \\\\"
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


# ---- figures -------------------------------------------------------------------------------------

# group, loss, R@1 of seed 0, ρ(Φ): one method or more of each family, and a ρ-regularised variant
FIGURE_METHODS = [
    ("CUB_Margin_b12_Distance", "margin", 0.60, 0.30), ("CUB_Triplet_Semihard", "triplet", 0.55, 0.40),
    ("CUB_MS", "multisimilarity", 0.62, 0.25), ("CUB_ProxyNCA", "proxynca", 0.58, 0.35),
    ("CUB_ArcFace", "arcface", 0.61, 0.28), ("CUB_Histogram", "histogram", 0.52, 0.45),
    ("CUBreg_Margin_b12_Distance", "margin", 0.63, 0.20), ("CUB_Mystery", "my_new_loss", 0.50, 0.50),
]  # fmt: skip


@pytest.fixture
def figure_rows(tmp_path):
    """Selected-epoch rows of 8 methods × 2 seeds on CUB200 (R@1/2/4/8, F1, MAP@R, NMI, π, ρ) and
    the same on SOP (R@1/10/100/1000)."""
    root = tmp_path / "runs"
    for dataset, ranks in (("cub200", (1, 2, 4, 8)), ("online_products", (1, 10, 100, 1000))):
        for i, (group, loss, r1, rho) in enumerate(FIGURE_METHODS):
            for seed in (0, 1):
                x = r1 + seed * 0.02
                test = {f"e_recall@{k}": [min(1.0, x + 0.03 * j)] for j, k in enumerate(ranks)}
                test |= {
                    "f1": [x / 2 + 0.01 * (i % 3)],
                    "mAP@R": [x / 3],
                    "nmi": [0.5 - 0.01 * (i % 2) + x / 10],
                }
                evaluation = {"dists@intra": [rho + 0.1], "dists@inter": [0.9 - rho / 5],
                              "dists@intra_over_inter": [(rho + 0.1) / (0.9 - rho / 5)], "rho_spectrum@2": [rho + seed / 100]}  # fmt: skip
                folder = fabricate(root, dataset, f"{group}_s{seed}", seed, group,
                                   {"testing": test, "evaluation": evaluation}, 0)  # fmt: skip
                args = json.loads((folder / "args.json").read_text())
                args["args"]["loss"] = loss
                (folder / "args.json").write_text(json.dumps(args))
    return RE.aggregate(RE.load_local_runs(root), RE.SELECTED)


def _drawn(fig) -> dict[str, tuple[str, str]]:
    """``{method: (colour, marker or "bar")}`` of every method artist of a figure (their gid)."""
    from matplotlib.colors import to_hex

    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid():
                filled = line.get_markerfacecolor() not in ("white", "none")
                face = line.get_markerfacecolor() if filled else line.get_markeredgecolor()
                out.setdefault(line.get_gid(), set()).add((to_hex(face), line.get_marker()))
        for patch in ax.patches:
            if patch.get_gid():
                filled = to_hex(patch.get_facecolor()) != "#ffffff"
                face = patch.get_facecolor() if filled else patch.get_edgecolor()
                out.setdefault(patch.get_gid(), set()).add((to_hex(face), "bar"))
    return out


def test_one_fixed_palette_per_family_in_every_figure(figure_rows):
    import matplotlib.pyplot as plt

    figures = RE.build_figures(figure_rows)
    assert set(figures) == {"metric_correlation_matrix", "comp_metric_relation", "Detailed_Rel_Recall_Rho_CUB200",
                            "Detailed_Rel_Recall_Rho_SOP", "FirstPage"}  # fmt: skip
    family = {r["method"]: r["family"] for r in figure_rows}
    assert family["Multisimilarity"] == "multi-pair" and family["ProxyNCA"] == "proxy-based"
    assert family["ArcFace"] == "classification-based" and family["Mystery"] == "other"
    markers: dict[str, set[str]] = {}
    seen = set()
    for name in (
        "comp_metric_relation",
        "Detailed_Rel_Recall_Rho_CUB200",
        "Detailed_Rel_Recall_Rho_SOP",
        "FirstPage",
    ):
        drawn = _drawn(figures[name])
        assert drawn, name
        for method, styles in drawn.items():
            for face, marker in styles:  # the family's colour, whatever the figure
                assert face == RE.FAMILY_COLOURS[family[method]].lower(), (name, method)
                if marker != "bar":
                    markers.setdefault(method, set()).add(marker)
            seen.add(method)
    assert seen == set(family)
    assert all(len(m) == 1 for m in markers.values())  # one marker per method in every figure
    baseline = {m for m in markers if not m.startswith("R-")}
    assert len({next(iter(markers[m])) for m in baseline}) == len(baseline)  # distinct shapes: greyscale
    assert markers["R-Margin (D, β=1.2)"] == markers["Margin (D, β=1.2)"]  # the variant: same shape, hollow
    for fig in figures.values():
        plt.close(fig)
    # the palette is a fixed function of the family: the same for every call and every loss of a family
    assert RE.colour("margin") == RE.colour("triplet") == RE.colour("pair-based") == "#0072B2"
    assert RE.colour("R-Margin (D, β=1.2)") == RE.colour("CUB_Margin_b12_Distance") == "#0072B2"
    assert len({RE.colour(f) for f in RE.FAMILY_COLOURS}) == len(RE.FAMILY_COLOURS)
    assert RE.colour("no_such_loss") == RE.FAMILY_COLOURS["other"]


def test_every_loss_of_criteria_has_a_family():
    import criteria

    assert [n for n in criteria.REGISTRY.names() if RE.method_family(n) == "other"] == []
    assert (
        RE.method_family(None, "SOP_GenLifted") == "multi-pair"
        and RE.method_family("", "CUB_SoftTriple") == "proxy-based"
    )


def test_correlation_matrix_diverging_centred_with_colour_bar(figure_rows):
    import matplotlib.pyplot as plt

    fig = RE.correlation_figure(figure_rows)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2  # CUB200 and SOP
    for image in images:
        assert image.get_clim() == (-1, 1) and image.get_cmap().name.startswith("RdBu")
        assert image.norm(0.0) == pytest.approx(0.5)  # white at r = 0
    assert images[0].colorbar is not None and "Pearson r" in images[0].colorbar.ax.get_ylabel()
    cub = images[0].axes
    labels = [t.get_text() for t in cub.get_xticklabels()]
    assert labels == ["R@1", "R@2", "R@4", "R@8", "F1", "MAP@R", "NMI"]
    sop = images[1].axes
    assert [t.get_text() for t in sop.get_yticklabels()][:4] == ["R@1", "R@10", "R@100", "R@1000"]
    for text in cub.texts:  # each value in black or white, whichever contrasts more with its cell
        background = images[0].cmap(images[0].norm(float(text.get_text())))
        lum = RE.relative_luminance(background)
        ink = 0.0 if text.get_color() == "black" else 1.0
        ratio = (max(lum, ink) + 0.05) / (min(lum, ink) + 0.05)
        assert ratio >= 4.5, (text.get_text(), text.get_color())  # WCAG AA
    assert {t.get_color() for t in cub.texts} <= {"black", "white"}
    plt.close(fig)


def test_axes_are_labelled_with_human_names_and_units(figure_rows):
    import matplotlib.pyplot as plt

    figures = RE.build_figures(figure_rows)
    for name, fig in figures.items():
        for ax in fig.axes:
            if not ax.has_data() or ax.get_label() == "<colorbar>":
                continue
            words = [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
            words += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
            assert not any(
                raw in w for w in words for raw in ("e_recall", "rho_spectrum", "dists@", "testing/")
            ), name
        assert (
            fig.legends or name == "metric_correlation_matrix" or any(ax.get_legend() for ax in fig.axes)
        ), name
    relation = figures["comp_metric_relation"]
    axes = [ax for ax in relation.axes if ax.has_data()]
    assert axes[0].get_ylabel() == "R@1 (%), test split"
    assert "ρ(Φ)" in axes[3].get_xlabel() and "nats" in axes[3].get_xlabel()
    assert "cosine distance" in axes[0].get_xlabel()
    assert "Pearson r = " in axes[0].get_title()  # in the title: no box over the points
    assert all(not ax.texts for ax in axes)
    assert figures["FirstPage"].axes[0].get_xlabel().startswith("R@1 (%)")
    for fig in figures.values():
        plt.close(fig)


def test_bars_start_at_zero_with_the_tables_interval(figure_rows):
    import matplotlib.pyplot as plt

    fig = RE.bar_figure(figure_rows, "cub200")
    (ax,) = [a for a in fig.axes if a.has_data()]
    assert ax.get_xlim()[0] == 0
    row = next(r for r in figure_rows if r["dataset"] == "cub200" and r["method"] == "Multisimilarity")
    mean, std = row["testing/e_recall@1|mean"] * 100, row["testing/e_recall@1|std"] * 100
    assert std > 0
    bars = {c.patches[0].get_gid(): c for c in ax.containers if hasattr(c, "patches")}
    bar = bars["Multisimilarity"]
    assert bar.patches[0].get_width() == pytest.approx(mean)
    (segment,) = bar.errorbar.lines[2][0].get_segments()  # the error bar: mean ± the std of the table
    assert segment[0][0] == pytest.approx(mean - std) and segment[1][0] == pytest.approx(mean + std)
    assert "± 1 sample std" in ax.get_title()
    plt.close(fig)
    # a row with a confidence interval: the bar is that interval
    ci = dict(row, **{"testing/e_recall@1|ci_low": 0.5, "testing/e_recall@1|ci_high": 0.7})
    assert RE.interval(ci, "testing/e_recall@1") == pytest.approx((mean - 50, 70 - mean))


def test_metric_labels_and_column_names():
    assert [RE.metric_label(m) for m in ("e_recall@1", "testing/e_recall@100", "mAP@R", "nmi", "f1",
                                         "rho_spectrum@2", "rho_spectrum@-1", "dists@intra", "precision@1")] == [
        "R@1", "R@100", "MAP@R", "NMI", "F1", "ρ(Φ)", "ρ@-1", "π_intra", "P@1"]  # fmt: skip
    assert RE.parse_column("R@10") == RE.Column("R@10", "testing/e_recall@10", 100)
    assert RE.parse_column("map@r").key == "testing/mAP@R" and RE.parse_column("NMI").key == "testing/nmi"
    assert RE.parse_column("e_recall@1000").header == "R@1000"
    assert RE.parse_column("validation/R@1") == RE.Column("R@1 (validation)", "validation/e_recall@1", 100)
    assert RE.parse_column("ρ(Φ)") == RE.Column("ρ(Φ)", "testing/rho_spectrum@2", 1)  # no "better": unscaled
    with pytest.raises(ValueError, match="unknown column"):
        RE.parse_column("R@1 & NMI")


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
                 {"selected_epoch": 0, "selection_split": "testing", "metrics/testing/e_recall@1": r1,
                  "compute/wall_time_s": 100.0 * (seed + 1), "compute/peak_gpu_mem_mb": None},
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
    assert sel["method"] == "Multisimilarity" and sel["family"] == "multi-pair"  # from the group name
    assert sel["compute/wall_time_s|mean"] == pytest.approx(150.0)  # summary.json's compute, flattened
    assert "compute/peak_gpu_mem_mb|mean" not in sel
