"""Aggregate finished runs into the study's result tables and figures.

    python Result_Evaluations.py [--runs Training_Results] [--out Result_Tables]
    python Result_Evaluations.py --wandb_project entity/RevisitDML      (W&B public API, needs network)

Sources: local run folders (default: every ``<root>/<dataset>/<run>/summary.json`` of a finished
training run; ``--evaluate_only`` folders are skipped), or a W&B project written by ``main.py
--log_online``. Runs are grouped by their ``--group`` (from ``args.json`` / the W&B config; the
seed is never parsed out of the run name), per dataset.

Two protocols, always labelled:

* **selected** (the default, reported first): every metric of every split *at the run's selected
  epoch* (``summary.json``; selected on the validation split when the run had one, otherwise on
  the test split, which the tables flag with a †);
* **max over epochs (test)**: the study's own protocol (§10 of the reference notes): per seed the
  maximum over epochs of each test metric *separately* (so R@1 and NMI may come from different
  epochs), then mean ± std over seeds. It is optimistic; it is reproduced for comparison only.

Aggregation over seeds: mean and **sample standard deviation (ddof = 1)**; the study used ddof = 0
(``np.std``), which underestimates the spread of 5 seeds by a factor √(4/5). With one seed the std
is undefined and shown as "n=1".

Outputs (in ``--out``): ``results.csv`` (one row per dataset × group × protocol: seed count and
mean/std of every metric), ``results.md`` (Markdown tables), ``table_<dataset>.tex`` (the study's
per-dataset table: R@1, R@2, F1, mAP, NMI, selected epoch; cells ``$mean\\pm std$`` × 100),
``table_shared.tex`` (R@1 and NMI on CUB200, CARS196 and SOP side by side, baselines first, then the
ρ-regularised ``R-`` variants) and the figures as PNG and PDF:

* ``metric_correlation_matrix``: Pearson correlations of the test metrics across methods, per dataset;
* ``comp_metric_relation``: test R@1 against π_intra, π_inter, π_ratio and ρ(Φ) (training-class
  embeddings at the selected epoch), least-squares line and Pearson r, per dataset;
* ``Detailed_Rel_Recall_Rho_<DATASET>``: R@1 against ρ(Φ), baselines vs ρ-regularised;
* ``FirstPage``: bar chart of R@1 with std error bars (baselines and R- variants).

Colours are deterministic (a method's colour is a hash of its name). Deviations from the study's
script: local runs first and W&B optional (the study needed the network and a hard-coded project);
no import-time work; robust grouping; ddof = 1; metrics at the selected epoch by default; every
run counts (the study silently dropped runs with ≤ 40 logged epochs; here only unfinished runs,
without ``summary.json``, are left out and the seed count is in every table); no ``adjustText``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SELECTED = "selected"
MAX_OVER_EPOCHS = "max over epochs (test)"
DATASET_ORDER = ["cub200", "cars196", "online_products", "in-shop", "digits"]
DATASET_NAMES = {"cub200": "CUB200-2011", "cars196": "CARS196", "online_products": "SOP", "in-shop": "In-Shop",
                 "digits": "Digits"}  # fmt: skip
# The study's table columns: (header, split, metric, scale).
TABLE_COLUMNS = [
    ("R@1", "testing", "e_recall@1", 100), ("R@2", "testing", "e_recall@2", 100), ("F1", "testing", "f1", 100),
    ("mAP@R", "testing", "mAP@R", 100), ("NMI", "testing", "nmi", 100),
]  # fmt: skip
CORRELATION_METRICS = ["e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP@R"]
# Embedding-space metrics of the study's figures, on the training classes ("evaluation" split).
RELATION_METRICS = [("π_intra", "dists@intra"), ("π_inter", "dists@inter"),
                    ("π_ratio", "dists@intra_over_inter"), ("ρ(Φ)", "rho_spectrum@2")]  # fmt: skip
PRETTY = {
    "Margin_b06_Distance": "Margin (D, β=0.6)", "Margin_b12_Distance": "Margin (D, β=1.2)",
    "Triplet_Random": "Triplet (R)", "Triplet_Semihard": "Triplet (S)", "Triplet_Softhard": "Triplet (H)",
    "Triplet_Distance": "Triplet (D)", "Quadruplet_Distance": "Quadruplet (D)", "SNR_Distance": "SNR (D)",
    "MS": "Multisimilarity", "Npair": "N-Pair", "GenLifted": "GenLifted", "ProxyNCA": "ProxyNCA",
    "Histogram": "Histogram", "Contrastive": "Contrastive", "SoftTriple": "SoftTriple",
    "Angular": "Angular", "ArcFace": "ArcFace", "Softmax": "Softmax",
}  # fmt: skip
_PREFIX = re.compile(r"^(CUB|CARS?|SOP|DIG|INSHOP)(reg)?_", re.IGNORECASE)


@dataclass
class Run:
    """One finished run: its group, seed and metrics."""

    dataset: str
    group: str
    seed: int
    selected_epoch: int | None
    selection_split: str | None
    selected: dict[str, dict[str, Any]]  # split -> metric -> value at the selected epoch
    epochs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # split -> per-epoch rows
    name: str = ""


# ---- sources -----------------------------------------------------------------------------------


def load_local_runs(root: str | Path) -> list[Run]:
    """Every finished training run under ``root`` (``<root>/<dataset>/<run>/summary.json``)."""
    runs = []
    for summary_file in sorted(Path(root).glob("**/summary.json")):
        folder = summary_file.parent
        try:
            summary = json.loads(summary_file.read_text())
            if summary.get("evaluate_only") or not (folder / "args.json").is_file():
                continue
            args = json.loads((folder / "args.json").read_text())["args"]
        except (json.JSONDecodeError, KeyError) as err:  # one broken run must not stop the table
            print(f"skipping {folder}: unreadable summary.json/args.json ({err})")
            continue
        epochs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        if (folder / "metrics.csv").is_file():
            with (folder / "metrics.csv").open() as f:
                for row in csv.DictReader(f):
                    epochs[row["split"]].append({k: _number(v) for k, v in row.items() if k != "split"})
        runs.append(Run(
            dataset=args["dataset"], group=_group(args, folder.name), seed=int(args["seed"]),
            selected_epoch=summary.get("selected_epoch"), selection_split=summary.get("selection_split"),
            selected={s: m for s, m in (summary.get("metrics") or {}).items() if m}, epochs=dict(epochs),
            name=folder.name,
        ))  # fmt: skip
    return runs


def load_wandb_runs(project: str, api: Any = None) -> list[Run]:
    """Finished runs of a W&B project logged by ``main.py --log_online`` (public API).

    ``api`` defaults to ``wandb.Api()`` (credentials from ``WANDB_API_KEY`` / ``wandb login``); any
    object with ``runs(project)`` returning items with ``name``, ``config``, ``summary`` and
    ``scan_history()`` works, which is how this is tested offline.
    """
    if api is None:
        import wandb  # only for --wandb_project: a slow import the local path never pays

        api = wandb.Api()
    runs = []
    for wb_run in api.runs(project):
        config = {k: v for k, v in dict(wb_run.config).items() if not k.startswith("_")}
        summary = dict(wb_run.summary)
        if "selected_epoch" not in summary or "dataset" not in config:
            continue  # unfinished, or not written by main.py
        selected: dict[str, dict[str, Any]] = defaultdict(dict)
        for key, value in summary.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "metrics":
                selected[parts[1]][parts[2]] = value
        epochs: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for row in wb_run.scan_history():
            for key, value in row.items():
                if "/" in key and "epoch" in row:
                    split, metric = key.split("/", 1)
                    epochs[split].setdefault(int(row["epoch"]), {"epoch": int(row["epoch"])})[metric] = value
        runs.append(Run(
            dataset=config["dataset"], group=_group(config, wb_run.name), seed=int(config["seed"]),
            selected_epoch=summary["selected_epoch"], selection_split=summary.get("selection_split"),
            selected=dict(selected), epochs={s: [r[e] for e in sorted(r)] for s, r in epochs.items()},
            name=wb_run.name,
        ))  # fmt: skip
    return runs


def _group(args: dict[str, Any], name: str) -> str:
    group = args.get("group")
    if group and group != "Sample_Group":
        return str(group)
    suffix = f"_s{args.get('seed')}"  # the run-name convention <group>_s<seed>, matched exactly
    return name[: -len(suffix)] if name.endswith(suffix) else name


def _number(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


# ---- aggregation -------------------------------------------------------------------------------


def method_name(group: str) -> tuple[str, bool]:
    """``CUBreg_Margin_b12_Distance_3`` -> ("R-Margin (D, β=1.2)", True): the dataset prefix and the
    study's "_3" suffix are dropped so the same method lines up across datasets."""
    m = _PREFIX.match(group)
    regularised = bool(m and m.group(2))
    core = group[m.end() :] if m else group
    core = re.sub(r"_\d+$", "", core)
    pretty = PRETTY.get(core, core.replace("_", " "))
    return (f"R-{pretty}" if regularised else pretty), regularised


def per_run_values(run: Run, protocol: str) -> dict[str, float]:
    """``{"<split>/<metric>": value}`` of one run under ``protocol``, plus ``epoch``."""
    out: dict[str, float] = {}
    if protocol == SELECTED:
        for split, metrics in run.selected.items():
            out.update({f"{split}/{k}": float(v) for k, v in metrics.items() if _is_number(v)})
        if run.selected_epoch is not None:
            out["epoch"] = float(run.selected_epoch)
    else:
        rows = run.epochs.get("testing", [])
        keys = {k for r in rows for k, v in r.items() if k != "epoch" and _is_number(v)}
        for k in keys:
            values = [float(r[k]) for r in rows if _is_number(r.get(k))]
            out[f"testing/{k}"] = max(values)
        recall = [(r.get("e_recall@1"), r["epoch"]) for r in rows if _is_number(r.get("e_recall@1"))]
        if recall:
            out["epoch"] = float(max(recall, key=lambda t: t[0])[1])  # first epoch of the maximum
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(runs: Iterable[Run], protocol: str = SELECTED) -> list[dict[str, Any]]:
    """One row per (dataset, group): seeds, selection split, and mean / std (ddof=1) per quantity."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.dataset, run.group)].append(run)
    rows = []
    for (dataset, group), members in groups.items():
        members.sort(key=lambda r: r.seed)
        values = [per_run_values(r, protocol) for r in members]
        method, regularised = method_name(group)
        split_names = sorted({r.selection_split for r in members if r.selection_split})
        row: dict[str, Any] = {
            "dataset": dataset, "group": group, "method": method, "regularised": regularised,
            "protocol": protocol, "n_seeds": len(members), "seeds": " ".join(str(r.seed) for r in members),
            "selection_split": "/".join(split_names) if protocol == SELECTED else "testing (max per metric)",
        }  # fmt: skip
        for key in sorted({k for v in values for k in v}):
            x = np.array([v[key] for v in values if key in v], dtype=np.float64)
            row[f"{key}|mean"] = float(x.mean())
            row[f"{key}|std"] = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
            row[f"{key}|n"] = len(x)
        rows.append(row)
    rows.sort(key=lambda r: (_dataset_rank(r["dataset"]), r["regularised"], r["method"]))
    return rows


def _dataset_rank(dataset: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


# ---- tables ------------------------------------------------------------------------------------


def cell(row: dict[str, Any], key: str, scale: float = 100, latex: bool = True) -> str:
    mean, std = row.get(f"{key}|mean"), row.get(f"{key}|std")
    if mean is None:
        return "-"
    if std is None or math.isnan(std):
        return f"${mean * scale:.2f}$ (n=1)" if latex else f"{mean * scale:.2f} (n=1)"
    return (
        f"${mean * scale:.2f}\\pm{std * scale:.2f}$" if latex else f"{mean * scale:.2f} ± {std * scale:.2f}"
    )


def _dagger(row: dict[str, Any]) -> str:
    return "$^\\dagger$" if row["protocol"] == SELECTED and "testing" in row["selection_split"] else ""


def latex_single_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """The study's per-dataset table (§10): Name & R@1 & R@2 & F1 & mAP & NMI & epoch."""
    lines = [
        "% " + _protocol_note(rows),
        "\\begin{tabular}{l" + "c" * (len(TABLE_COLUMNS) + 2) + "}",
        "Name & " + " & ".join(h.replace("@", "@") for h, *_ in TABLE_COLUMNS) + " & Epoch & Seeds \\\\",
        "\\hline",
    ]
    for row in (r for r in rows if r["dataset"] == dataset):
        cells = [cell(row, f"{split}/{metric}", scale) for _, split, metric, scale in TABLE_COLUMNS]
        cells.append(cell(row, "epoch", 1))
        lines.append(
            f"{_latex_escape(row['method'])}{_dagger(row)} & "
            + " & ".join(cells)
            + f" & {row['n_seeds']} \\\\"
        )
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def latex_shared_table(rows: list[dict[str, Any]], datasets: list[str] | None = None) -> str:
    """R@1 and NMI per dataset, one row per method: baselines first, then the R- variants."""
    datasets = datasets or [
        d for d in ("cub200", "cars196", "online_products") if any(r["dataset"] == d for r in rows)
    ]
    by_method: dict[tuple[bool, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_method[(row["regularised"], row["method"])][row["dataset"]] = row
    header = " & ".join(f"{DATASET_NAMES.get(d, d)} R@1 & {DATASET_NAMES.get(d, d)} NMI" for d in datasets)
    lines = ["% " + _protocol_note(rows), "\\begin{tabular}{l" + "c" * (2 * len(datasets)) + "}",
             f"Name & {header} \\\\", "\\hline"]  # fmt: skip
    for (_, method), per_dataset in sorted(by_method.items()):
        cells = []
        for d in datasets:
            row = per_dataset.get(d)
            cells += [cell(row, "testing/e_recall@1"), cell(row, "testing/nmi")] if row else ["-", "-"]
        lines.append(f"{_latex_escape(method)} & " + " & ".join(cells) + " \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    out = []
    for protocol in (SELECTED, MAX_OVER_EPOCHS):
        prow = [r for r in rows if r["protocol"] == protocol]
        for dataset in sorted({r["dataset"] for r in prow}, key=_dataset_rank):
            out.append(f"### {DATASET_NAMES.get(dataset, dataset)} — {protocol}\n")
            out.append(_protocol_note(prow) + "\n")
            out.append(
                "| Method | " + " | ".join(h for h, *_ in TABLE_COLUMNS) + " | Epoch | Seeds | Selected on |"
            )
            out.append("|---" * (len(TABLE_COLUMNS) + 4) + "|")
            for row in (r for r in prow if r["dataset"] == dataset):
                cells = [cell(row, f"{s}/{m}", sc, latex=False) for _, s, m, sc in TABLE_COLUMNS]
                out.append(f"| {row['method']} | " + " | ".join(cells) + f" | {cell(row, 'epoch', 1, latex=False)} | "
                           f"{row['n_seeds']} | {row['selection_split']} |")  # fmt: skip
            out.append("")
    return "\n".join(out) + "\n"


def _protocol_note(rows: list[dict[str, Any]]) -> str:
    if rows and rows[0]["protocol"] == MAX_OVER_EPOCHS:
        return ("per seed: maximum over epochs of each test metric separately (the study's protocol, "
                "optimistic); mean ± std over seeds, std with ddof=1; ×100")  # fmt: skip
    return ("metrics at each run's selected epoch; † = epoch selected on the test split; "
            "mean ± std over seeds, std with ddof=1; ×100")  # fmt: skip


def _latex_escape(text: str) -> str:
    text = text.replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")
    return text.replace("β", "$\\beta$").replace("ρ", "$\\rho$")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# ---- figures -----------------------------------------------------------------------------------


def colour(name: str) -> tuple[float, float, float, float]:
    """A method's colour: a fixed function of its name (the same in every figure and every call)."""
    import matplotlib  # lazy: the table-only path does not pay for matplotlib

    return matplotlib.colormaps["tab20"](zlib.crc32(name.encode()) % 20)


def make_figures(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The study's figures from the ``selected`` rows; returns the written files."""
    import matplotlib  # lazy, and the Agg backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["protocol"] == SELECTED]
    datasets = sorted({r["dataset"] for r in rows}, key=_dataset_rank)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            fig.savefig(
                path, bbox_inches="tight", dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None
            )
            written.append(path)
        plt.close(fig)

    # metric correlation matrix
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        basic = [r for r in rows if r["dataset"] == dataset and not r["regularised"]]
        names = [m for m in CORRELATION_METRICS if all(f"testing/{m}|mean" in r for r in basic)]
        ax.set_title(DATASET_NAMES.get(dataset, dataset))
        values = np.array([[r[f"testing/{m}|mean"] for m in names] for r in basic])
        if len(basic) < 3 or len(names) < 2:
            ax.text(0.5, 0.5, "needs ≥ 3 methods", ha="center", va="center")
            ax.set_axis_off()
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(values.T)
        ax.imshow(corr, cmap="plasma", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    save(fig, "metric_correlation_matrix")

    # R@1 against the embedding-space metrics of the training classes
    fig, axes = plt.subplots(
        len(datasets), len(RELATION_METRICS), figsize=(16, 3.6 * len(datasets)), squeeze=False
    )
    for i, dataset in enumerate(datasets):
        basic = [r for r in rows if r["dataset"] == dataset and not r["regularised"]]
        for j, (label, metric) in enumerate(RELATION_METRICS):
            ax = axes[i, j]
            pts = [r for r in basic if f"evaluation/{metric}|mean" in r and "testing/e_recall@1|mean" in r]
            ax.set_xlabel(f"{label} (training classes)")
            ax.set_ylabel(f"{DATASET_NAMES.get(dataset, dataset)} R@1")
            x = np.array([r[f"evaluation/{metric}|mean"] for r in pts])
            y = np.array([r["testing/e_recall@1|mean"] * 100 for r in pts])
            yerr = np.array([np.nan_to_num(r["testing/e_recall@1|std"]) * 100 for r in pts])
            for r, xi, yi, ei in zip(pts, x, y, yerr, strict=True):
                ax.errorbar(xi, yi, yerr=ei, fmt="o", color=colour(r["method"]), capsize=2)
            if len(pts) >= 3 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, y, 1)
                grid = np.linspace(x.min(), x.max(), 10)
                ax.plot(grid, slope * grid + intercept, "k--", lw=1)
                ax.text(0.05, 0.92, f"r = {np.corrcoef(x, y)[0, 1]:.2f}", transform=ax.transAxes,
                        bbox={"facecolor": "white", "alpha": 0.8})  # fmt: skip
    save(fig, "comp_metric_relation")

    # R@1 against ρ(Φ): baselines vs ρ-regularised
    for dataset in datasets:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for regularised, col in ((False, "deepskyblue"), (True, "orange")):
            pts = [r for r in rows if r["dataset"] == dataset and r["regularised"] == regularised
                   and "evaluation/rho_spectrum@2|mean" in r and "testing/e_recall@1|mean" in r]  # fmt: skip
            ax.scatter([r["evaluation/rho_spectrum@2|mean"] for r in pts],
                       [r["testing/e_recall@1|mean"] * 100 for r in pts], color=col, s=40,
                       label="ρ-regularised" if regularised else "baseline")  # fmt: skip
            for r in pts:
                ax.annotate(r["method"], (r["evaluation/rho_spectrum@2|mean"], r["testing/e_recall@1|mean"] * 100),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("ρ(Φ) (training classes)")
        ax.set_ylabel("R@1 (test)")
        ax.set_title(DATASET_NAMES.get(dataset, dataset))
        ax.legend()
        save(fig, f"Detailed_Rel_Recall_Rho_{DATASET_NAMES.get(dataset, dataset).split('-')[0]}")

    # bar chart of R@1 (first dataset)
    if datasets:
        bars = sorted((r for r in rows if r["dataset"] == datasets[0] and "testing/e_recall@1|mean" in r),
                      key=lambda r: r["testing/e_recall@1|mean"])  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.5))
        ax.barh([r["method"] for r in bars], [r["testing/e_recall@1|mean"] * 100 for r in bars],
                xerr=[np.nan_to_num(r["testing/e_recall@1|std"]) * 100 for r in bars],
                color=["forestgreen" if r["regularised"] else "orange" for r in bars], capsize=2)  # fmt: skip
        lo = min((r["testing/e_recall@1|mean"] * 100 for r in bars), default=0)
        ax.set_xlim(max(0.0, lo - 5), None)
        ax.set_xlabel(f"{DATASET_NAMES.get(datasets[0], datasets[0])} R@1 (test, selected epoch)")
        save(fig, "FirstPage")
    return written


# ---- command line ------------------------------------------------------------------------------


def run(runs: list[Run], out: Path, figures: bool = True) -> list[dict[str, Any]]:
    """Aggregate ``runs`` under both protocols and write every table (and figure) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs, SELECTED) + aggregate(runs, MAX_OVER_EPOCHS)
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(markdown_tables(rows))
    selected = [r for r in rows if r["protocol"] == SELECTED]
    for dataset in sorted({r["dataset"] for r in rows}, key=_dataset_rank):
        (out / f"table_{dataset}.tex").write_text(latex_single_table(selected, dataset))
        maxed = [r for r in rows if r["protocol"] == MAX_OVER_EPOCHS]
        (out / f"table_{dataset}_max_over_epochs.tex").write_text(latex_single_table(maxed, dataset))
    (out / "table_shared.tex").write_text(latex_shared_table(selected))
    if figures:
        make_figures(rows, out)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="Training_Results", help="root of the local run folders")
    parser.add_argument("--wandb_project", default="", help="read this W&B project (entity/project) instead")
    parser.add_argument("--out", default="Result_Tables", help="output folder")
    parser.add_argument("--no_figures", action="store_true")
    opt = parser.parse_args(argv)
    runs = load_wandb_runs(opt.wandb_project) if opt.wandb_project else load_local_runs(opt.runs)
    if not runs:
        raise SystemExit(f"no finished runs found in {opt.wandb_project or opt.runs}")
    rows = run(runs, Path(opt.out), figures=not opt.no_figures)
    print(markdown_tables(rows))
    print(f"{len(runs)} runs, {len(rows) // 2} groups -> {opt.out}")
    return rows


if __name__ == "__main__":
    main()
