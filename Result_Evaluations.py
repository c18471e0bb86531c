"""Aggregate finished runs into the study's result tables and figures.

    python Result_Evaluations.py [--runs Training_Results] [--out Result_Tables]
    python Result_Evaluations.py --groups 'DIG_*' --exclude 'DIG_Triplet*' --datasets digits
    python Result_Evaluations.py --wandb_project entity/RevisitDML      (W&B public API, needs network)

Sources: local run folders (default: every ``<root>/<dataset>/<run>/summary.json`` of a finished
training run; ``--evaluate_only`` folders are skipped), or a W&B project written by ``main.py
--log_online``. Runs are grouped by their ``--group`` (from ``args.json`` / the W&B config; the
seed is never parsed out of the run name; a run without a group is grouped by its name minus the
``_s<seed>`` suffix and a rerun's ``_<n>``), per dataset.

Filters: ``--groups PATTERN...`` keeps the groups matching any of the shell patterns (``DIG_*``),
``--exclude PATTERN...`` drops every run whose group *or* run-folder name matches one (a Quickstart
run ``digits_margin_smallcnn_normalize_<time>`` is its own group: ``--exclude 'digits_*'``),
``--datasets NAME...`` keeps those datasets.

One group = the seeds of one setup. Two checks keep a group honest:

* **Duplicate seeds** (a rerun writes ``<group>_s1_1`` next to ``<group>_s1``): only the most
  recent finished run of a seed counts (latest ``summary.json``; the rerun's name breaks ties). One
  warning line per group names the dropped runs; the tables mark the method with a ‡ and
  ``results.csv`` lists them in ``dropped_duplicates``. A seed is never counted twice.
* **Differing protocol flags** (``PROTOCOL_FLAGS``: ``--n_epochs``, ``--bs``, ``--arch``,
  ``--embed_dim``, ``--use_tv_split``, the loss, miner, learning rate...): such runs are not seeds of
  one setup, so the tables are refused with one line naming the group, the flag and its values.
  ``--allow_mixed`` instead reports each setting as its own row (``Method [n_epochs=2]``, column
  ``setting``); runs with differing flags are never pooled.

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

Outputs (in ``--out``): ``results.csv`` (one row per dataset × group × protocol: seed count, kept
seeds, dropped duplicate runs and mean/std of every metric), ``results.md`` (Markdown tables),
``table_<dataset>.tex`` and ``table_<dataset>_max_over_epochs.tex`` (the study's per-dataset
table: R@1, R@2, F1, mAP@R, NMI × 100, selected epoch, seeds), ``table_shared.tex`` (R@1 and NMI on
CUB200, CARS196 and SOP side by side, baselines first, then the ρ-regularised ``R-`` variants; not
written when none of the three datasets has runs) and the figures as PNG and PDF:

* ``metric_correlation_matrix``: Pearson correlations of the test metrics across methods, per dataset;
* ``comp_metric_relation``: test R@1 against π_intra, π_inter, π_ratio and ρ(Φ) (training-class
  embeddings at the selected epoch), least-squares line and Pearson r, per dataset;
* ``Detailed_Rel_Recall_Rho_<DATASET>``: R@1 against ρ(Φ), baselines vs ρ-regularised;
* ``FirstPage``: bar chart of R@1 with std error bars (baselines and R- variants).

Every ``.tex`` is a ``table*`` float to ``\\input`` into a document whose preamble has
``\\usepackage{booktabs}`` (the first line says so): booktabs rules, the best mean of each
higher-is-better column in bold (ties: all; only where at least two methods have a value; the
embedding-space statistics π and ρ have no "better" direction and are never bolded), a caption
stating the protocol (selection split, with the test split flagged †; the number of seeds; mean ±
sample std; × 100; the markers), method names with LaTeX's special characters escaped, pure ASCII.

Colours are deterministic (a method's colour is a hash of its name). Deviations from the study's
script: local runs first and W&B optional (the study needed the network and a hard-coded project);
no import-time work; robust grouping; ddof = 1; metrics at the selected epoch by default; every
run counts (the study silently dropped runs with ≤ 40 logged epochs; here only unfinished runs,
without ``summary.json``, and duplicate seeds are left out, and the seed count is in every table);
no ``adjustText``.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import re
import sys
import unicodedata
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
# Flags that make two runs different setups, not two seeds of one: a group whose runs differ in one
# of them is refused (or, with --allow_mixed, split into one row per setting).
PROTOCOL_FLAGS = (
    "dataset", "n_epochs", "bs", "arch", "embed_dim", "use_tv_split", "tv_split_by_samples", "tv_split_perc",
    "loss", "batch_mining", "lr", "samples_per_class", "augmentation",
)  # fmt: skip
# Metric families (``metrics/``) where a larger value is better; everything else (the density
# statistics ``dists@*``, ``rho_spectrum@*``, epochs, losses) has no "best" and is never bolded.
HIGHER_IS_BETTER = {"e_recall", "c_recall", "precision", "r_precision", "mAP", "mAP_c", "mAP_1000", "mAP_lim",
                    "mAP@R", "mrr", "nmi", "c_nmi", "ami", "f1", "c_f1"}  # fmt: skip
DAGGER, DDAGGER = "\\dagger", "\\ddagger"


class MixedRunsError(ValueError):
    """A group whose runs differ in a protocol flag (one line: group, flag, values, runs)."""


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
    flags: dict[str, Any] = field(default_factory=dict)  # the PROTOCOL_FLAGS the run recorded
    finished: float = 0.0  # when it finished (summary.json mtime / W&B _timestamp): the newest duplicate wins


@dataclass
class Group:
    """The runs that are reported as one row: one seed each (duplicates dropped) and one setting."""

    dataset: str
    group: str
    members: list[Run]
    dropped: list[Run] = field(default_factory=list)  # older finished runs of a seed in ``members``
    setting: str = ""  # "n_epochs=2" where --allow_mixed split a group by its differing flags


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
            finished = summary_file.stat().st_mtime
        except (json.JSONDecodeError, KeyError, OSError) as err:  # one broken run must not stop the table
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
            name=folder.name, flags={k: args[k] for k in PROTOCOL_FLAGS if k in args}, finished=finished,
        ))  # fmt: skip
    return runs


def load_wandb_runs(project: str, api: Any = None, keep: Any = None) -> list[Run]:
    """Finished runs of a W&B project logged by ``main.py --log_online`` (public API).

    ``api`` defaults to ``wandb.Api()`` (credentials from ``WANDB_API_KEY`` / ``wandb login``); any
    object with ``runs(project)`` returning items with ``name``, ``config``, ``summary`` and
    ``scan_history()`` works, which is how this is tested offline. ``keep(dataset, group, name)``
    (the filters) is asked before a run's history is downloaded.
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
        group = _group(config, wb_run.name)
        if keep is not None and not keep(config["dataset"], group, wb_run.name):
            continue
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
            dataset=config["dataset"], group=group, seed=int(config["seed"]),
            selected_epoch=summary["selected_epoch"], selection_split=summary.get("selection_split"),
            selected=dict(selected), epochs={s: [r[e] for e in sorted(r)] for s, r in epochs.items()},
            name=wb_run.name, flags={k: config[k] for k in PROTOCOL_FLAGS if k in config},
            finished=float(summary["_timestamp"]) if _is_number(summary.get("_timestamp")) else 0.0,
        ))  # fmt: skip
    return runs


def _group(args: dict[str, Any], name: str) -> str:
    group = args.get("group")
    if group and group != "Sample_Group":
        return str(group)
    # the run-name convention <group>_s<seed>, matched exactly, plus the "_<n>" of a rerun
    m = re.fullmatch(rf"(.+)_s{re.escape(str(args.get('seed')))}(?:_\d+)?", name)
    return m.group(1) if m else name


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


def select_runs(
    runs: Iterable[Run],
    groups: list[str] | None = None,
    exclude: list[str] | None = None,
    datasets: list[str] | None = None,
) -> list[Run]:
    """The runs that pass the filters (see :func:`keep_run`)."""
    return [r for r in runs if keep_run(r.dataset, r.group, r.name, groups, exclude, datasets)]


def keep_run(
    dataset: str,
    group: str,
    name: str,
    groups: list[str] | None = None,
    exclude: list[str] | None = None,
    datasets: list[str] | None = None,
) -> bool:
    """``groups``: shell patterns, one must match the group; ``exclude``: none may match the group
    or the run name; ``datasets``: exact dataset names."""
    if datasets and dataset not in datasets:
        return False
    if groups and not any(fnmatch.fnmatchcase(group, p) for p in groups):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(x, p) for p in exclude for x in (group, name)))


def group_runs(runs: Iterable[Run], allow_mixed: bool = False, warn: bool = True) -> list[Group]:
    """Runs -> one :class:`Group` per (dataset, group[, setting]).

    A group whose runs differ in a :data:`PROTOCOL_FLAGS` flag raises :class:`MixedRunsError`
    (``allow_mixed``: one group per setting instead). Of several finished runs of one seed only the
    most recent is kept; the others go to ``dropped`` (one warning line per group on stderr)."""
    by_group: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_group[(run.dataset, run.group)].append(run)
    out = []
    for (dataset, group), members in by_group.items():
        settings = {id(r): {f: _flag_text(r.flags.get(f)) for f in PROTOCOL_FLAGS} for r in members}
        differing = [f for f in PROTOCOL_FLAGS if len({settings[id(r)][f] for r in members}) > 1]
        if differing and not allow_mixed:
            flag = differing[0]
            values: dict[str, list[str]] = defaultdict(list)
            for r in sorted(members, key=lambda r: _natural(r.name)):
                values[settings[id(r)][flag]].append(r.name)
            listed = "; ".join(f"{flag}={v}: {_names(n)}" for v, n in values.items())
            also = f" (also {', '.join(differing[1:])})" if len(differing) > 1 else ""
            raise MixedRunsError(
                f"{dataset}/{group}: its runs differ in --{flag}{also} ({listed}); runs of different setups "
                "are not seeds of one method: remove or --exclude the stray runs, or pass --allow_mixed to "
                "report each setting as its own row"
            )
        parts: dict[str, list[Run]] = defaultdict(list)
        for r in members:
            parts[", ".join(f"{f}={settings[id(r)][f]}" for f in differing)].append(r)
        for setting, part in parts.items():
            by_seed: dict[int, list[Run]] = defaultdict(list)
            for r in part:
                by_seed[r.seed].append(r)
            kept, dropped = [], []
            for seed in sorted(by_seed):
                newest_last = sorted(by_seed[seed], key=lambda r: (r.finished, _natural(r.name)))
                kept.append(newest_last[-1])
                dropped += newest_last[:-1]
            if dropped and warn:
                where = f"{dataset}/{group}" + (f" [{setting}]" if setting else "")
                seeds = sorted({r.seed for r in dropped})
                print(
                    f"warning: {where}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} "
                    f"finished more than once; kept the most recent run of each "
                    f"({_names([r.name for r in kept if r.seed in seeds])}), dropped "
                    f"{_names([r.name for r in dropped])} (marked ‡; results.csv: dropped_duplicates)",
                    file=sys.stderr,
                )
            out.append(Group(dataset, group, kept, dropped, setting))
    return out


def _flag_text(value: Any) -> str:
    return "-" if value is None else json.dumps(value, sort_keys=True).strip('"')


def _natural(name: str) -> list[Any]:
    """Sort key: "x_s1_10" after "x_s1_9" (numbers compared as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def aggregate(
    runs: Iterable[Run], protocol: str = SELECTED, allow_mixed: bool = False, warn: bool = True
) -> list[dict[str, Any]]:
    """One row per (dataset, group[, setting]): seeds, selection split, dropped duplicates, and
    mean / std (ddof=1) per quantity. Groups are formed by :func:`group_runs`."""
    rows = []
    for g in group_runs(runs, allow_mixed=allow_mixed, warn=warn):
        members = sorted(g.members, key=lambda r: r.seed)
        values = [per_run_values(r, protocol) for r in members]
        method, regularised = method_name(g.group)
        if g.setting:
            method = f"{method} [{g.setting}]"
        split_names = sorted({r.selection_split for r in members if r.selection_split})
        row: dict[str, Any] = {
            "dataset": g.dataset, "group": g.group, "setting": g.setting, "method": method,
            "regularised": regularised, "protocol": protocol, "n_seeds": len(members),
            "seeds": " ".join(str(r.seed) for r in members),
            "dropped_duplicates": " ".join(sorted((r.name for r in g.dropped), key=_natural)),
            "selection_split": "/".join(split_names) if protocol == SELECTED else "testing (max per metric)",
        }  # fmt: skip
        for key in sorted({k for v in values for k in v}):
            x = np.array([v[key] for v in values if key in v], dtype=np.float64)
            row[f"{key}|mean"] = float(x.mean())
            row[f"{key}|std"] = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
            row[f"{key}|n"] = len(x)
        rows.append(row)
    rows.sort(
        key=lambda r: (_dataset_rank(r["dataset"]), r["regularised"], r["method"], _natural(r["setting"]))
    )
    return rows


def _dataset_rank(dataset: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


# ---- tables ------------------------------------------------------------------------------------


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` (a name of ``metrics/``, e.g. ``e_recall@1``) is better; False
    for the statistics without a "better" direction (``dists@*``, ``rho_spectrum@*``) and anything
    unknown, which are then never bolded."""
    return metric in HIGHER_IS_BETTER or metric.partition("@")[0] in HIGHER_IS_BETTER


def best_values(rows: list[dict[str, Any]], columns: list[tuple[str, float]]) -> dict[str, float]:
    """``{key: best displayed mean}`` over ``rows`` for each higher-is-better ``(key, scale)`` that
    at least two rows have (a lone value is not "best" of anything)."""
    best = {}
    for key, scale in columns:
        if not higher_is_better(key.split("/", 1)[-1]):
            continue
        shown = [_shown(r, key, scale) for r in rows]
        shown = [v for v in shown if v is not None]
        if len(shown) >= 2:
            best[key] = max(shown)
    return best


def _shown(row: dict[str, Any] | None, key: str, scale: float) -> float | None:
    """The mean as the table prints it (two decimals): ties in print are ties in bold."""
    mean = row.get(f"{key}|mean") if row else None
    return None if mean is None else round(mean * scale, 2)


def cell(
    row: dict[str, Any] | None,
    key: str,
    scale: float = 100,
    latex: bool = True,
    best: dict[str, float] | None = None,
    mark: str = "",
) -> str:
    """``$mean\\pm std$`` (× ``scale``); ``$mean$ (n=1)`` for a single value; ``-`` for none. Bold
    where the shown mean equals ``best[key]``; ``mark`` (LaTeX math, e.g. ``\\dagger``) as a
    superscript."""
    mean = row.get(f"{key}|mean") if row else None
    if mean is None:
        return "-"
    std = row.get(f"{key}|std") if row else None
    bold = best is not None and key in best and _shown(row, key, scale) == best[key]
    single = std is None or math.isnan(std)
    if not latex:
        if single:
            return f"**{mean * scale:.2f}** (n=1)" if bold else f"{mean * scale:.2f} (n=1)"
        text = f"{mean * scale:.2f} ± {std * scale:.2f}"
        return f"**{text}**" if bold else text
    shown = f"\\mathbf{{{mean * scale:.2f}}}" if bold else f"{mean * scale:.2f}"
    sup = f"^{{{mark}}}" if mark else ""
    return f"${shown}{sup}$ (n=1)" if single else f"${shown}\\pm{std * scale:.2f}{sup}$"


def _marks(row: dict[str, Any]) -> list[str]:
    """LaTeX markers of a row: † epoch selected on the test split, ‡ duplicate seeds dropped."""
    out = []
    if row["protocol"] == SELECTED and "testing" in row["selection_split"]:
        out.append(DAGGER)
    if row.get("dropped_duplicates"):
        out.append(DDAGGER)
    return out


def _sup(marks: list[str]) -> str:
    if not marks:
        return ""
    return f"$^{marks[0]}$" if len(marks) == 1 else "$^{" + "".join(marks) + "}$"


def latex_single_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """The study's per-dataset table (§10): Method & R@1 & R@2 & F1 & mAP@R & NMI & Epoch & Seeds,
    baselines then R- variants; "" when ``rows`` has nothing for ``dataset``."""
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        return ""
    keys = [(f"{split}/{metric}", scale) for _, split, metric, scale in TABLE_COLUMNS]
    best = best_values(rows, keys)
    body: list[list[str] | str] = []
    previous = False
    for row in rows:
        if row["regularised"] and body and not previous:
            body.append("\\midrule")  # baselines above, rho-regularised variants below
        previous = row["regularised"]
        cells = [cell(row, key, scale, best=best) for key, scale in keys]
        body.append([latex_escape(row["method"]) + _sup(_marks(row)), *cells, cell(row, "epoch", 1),
                     str(row["n_seeds"])])  # fmt: skip
    protocol = rows[0]["protocol"]
    name = DATASET_NAMES.get(dataset, dataset)
    what = f"{latex_escape(name)}: " + ", ".join(h for h, *_ in TABLE_COLUMNS[:-1])
    what += f" and {TABLE_COLUMNS[-1][0]} on the test split"
    epoch = "the selected epoch" if protocol == SELECTED else "the epoch of the R@1 maximum"
    caption = _caption(rows, what, protocol, bold=bool(best), extra=f"Epoch: {epoch} (mean over seeds).")
    header = "Method & " + " & ".join(h for h, *_ in TABLE_COLUMNS) + " & Epoch & Seeds \\\\"
    label = f"tab:{dataset}" + ("" if protocol == SELECTED else "-max-over-epochs")
    return _latex_table(caption, label, 2 + len(TABLE_COLUMNS) + 1, [header, "\\midrule"], body)


def latex_shared_table(rows: list[dict[str, Any]], datasets: list[str] | None = None) -> str:
    """R@1 and NMI per dataset (CUB200, CARS196, SOP: those with runs), one row per method:
    baselines first, then the R- variants; "" when none of the datasets has runs."""
    datasets = datasets or [
        d for d in ("cub200", "cars196", "online_products") if any(r["dataset"] == d for r in rows)
    ]
    rows = [r for r in rows if r["dataset"] in datasets]
    if not datasets or not rows:
        return ""
    by_method: dict[tuple[bool, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        key = (row["regularised"], row["method"])
        if row["dataset"] in by_method[key]:  # two groups print as the same method: keep both rows
            key = (row["regularised"], f"{row['method']} [{row['group']}]")
        by_method[key][row["dataset"]] = row
    keys = [("testing/e_recall@1", 100), ("testing/nmi", 100)]
    best = {d: best_values([r for r in rows if r["dataset"] == d], keys) for d in datasets}
    body: list[list[str] | str] = []
    previous = False
    for (regularised, method), per_dataset in sorted(by_method.items()):
        if regularised and body and not previous:
            body.append("\\midrule")  # baselines above, rho-regularised variants below
        previous = regularised
        cells = [latex_escape(method)]
        for d in datasets:
            row = per_dataset.get(d)
            mark = "".join(_marks(row)) if row else ""
            cells += [cell(row, keys[0][0], best=best[d], mark=mark), cell(row, keys[1][0], best=best[d])]
        body.append(cells)
    names = [latex_escape(DATASET_NAMES.get(d, d)) for d in datasets]
    header = [
        " & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{n}}}" for n in names) + " \\\\",
        "".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(datasets))),
        "Method & " + " & ".join("R@1 & NMI" for _ in datasets) + " \\\\",
        "\\midrule",
    ]
    what = "R@1 and NMI on the test split of " + (" and ".join(names) if len(names) < 3 else
                                                    ", ".join(names[:-1]) + " and " + names[-1])  # fmt: skip
    caption = _caption(rows, what, rows[0]["protocol"], bold=any(best.values()))
    return _latex_table(caption, "tab:shared", 1 + 2 * len(datasets), header, body)


def _caption(rows: list[dict[str, Any]], what: str, protocol: str, bold: bool, extra: str = "") -> str:
    """The protocol in words: selection split (the test split flagged), seeds, mean ± std, × 100."""
    text = f"{what} ($\\times 100$), "
    test = [r for r in rows if protocol == SELECTED and "testing" in r["selection_split"]]
    if protocol != SELECTED:
        text += ("per seed the maximum over epochs of each test metric separately (the study's protocol: "
                 "optimistic, shown for comparison only).")  # fmt: skip
    elif not test:
        text += "at each run's selected epoch, selected on the validation split."
    elif len(test) == len(rows):
        text += ("at each run's selected epoch, selected on the \\textbf{TEST} split ($^\\dagger$; no "
                 "validation split: optimistic).")  # fmt: skip
    else:
        text += ("at each run's selected epoch, selected on the validation split or, where marked "
                 "$^\\dagger$, on the \\textbf{TEST} split (optimistic).")  # fmt: skip
    seeds = sorted({int(r["n_seeds"]) for r in rows})
    std = "mean $\\pm$ sample standard deviation (ddof${}=1$)"
    if seeds == [1]:
        text += " One seed per method: no standard deviation."
    else:
        count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}--{seeds[-1]}"
        text += f" {std[0].upper() + std[1:]} over {count} seeds per method"
        text += "; (n=1): a single seed, no standard deviation." if seeds[0] == 1 else "."
    if bold:
        text += " Best mean per column in bold."
    if extra:
        text += f" {extra}"
    if any(r.get("dropped_duplicates") for r in rows):
        text += (" $^\\ddagger$: a seed had several finished runs; only the most recent was kept (the "
                 "dropped runs: column dropped\\_duplicates of results.csv).")  # fmt: skip
    return text


def _latex_table(
    caption: str, label: str, columns: int, header: list[str], body: list[list[str] | str]
) -> str:
    """A booktabs ``table`` float; every row is checked against the column count before writing."""
    lines = [
        "% Written by Result_Evaluations.py. Preamble: \\usepackage{booktabs}. Use: \\input{} this file"
        " (a table* float: the full page width in a two-column paper).",
        "\\begin{table*}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        f"\\label{{{re.sub(r'[^A-Za-z0-9:-]+', '-', label)}}}",
        "\\small",
        "\\setlength{\\tabcolsep}{4pt}",
        "\\begin{tabular}{l" + "c" * (columns - 1) + "}",
        "\\toprule",
    ]
    for line in header:
        if line.endswith("\\\\") and _latex_width(line[:-2]) != columns:
            raise ValueError(f"header row has {_latex_width(line[:-2])} columns, not {columns}: {line}")
        lines.append(line)
    for row in body:
        if isinstance(row, str):
            lines.append(row)
            continue
        if len(row) != columns:
            raise ValueError(f"table row has {len(row)} cells, not {columns}: {row}")
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table*}"]
    text = "\n".join(lines) + "\n"
    if not text.isascii():
        raise ValueError(
            f"non-ASCII character in a LaTeX table: {sorted({c for c in text if not c.isascii()})}"
        )
    return text


def _latex_width(line: str) -> int:
    """Columns of one tabular row: cells separated by unescaped ``&``, ``\\multicolumn{n}`` counting n."""
    cells = re.split(r"(?<!\\)&", line)
    return sum(int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    out = []
    keys = [(f"{split}/{metric}", scale) for _, split, metric, scale in TABLE_COLUMNS]
    for protocol in (SELECTED, MAX_OVER_EPOCHS):
        prow = [r for r in rows if r["protocol"] == protocol]
        for dataset in sorted({r["dataset"] for r in prow}, key=_dataset_rank):
            drows = [r for r in prow if r["dataset"] == dataset]
            best = best_values(drows, keys)
            out.append(f"### {DATASET_NAMES.get(dataset, dataset)} — {protocol}\n")
            out.append(_protocol_note(drows) + "\n")
            out.append(
                "| Method | " + " | ".join(h for h, *_ in TABLE_COLUMNS) + " | Epoch | Seeds | Selected on |"
            )
            out.append("|---" * (len(TABLE_COLUMNS) + 4) + "|")
            for row in drows:
                cells = [cell(row, key, sc, latex=False, best=best) for key, sc in keys]
                marks = "".join({DAGGER: "†", DDAGGER: "‡"}[m] for m in _marks(row))
                method = row["method"].replace("|", "\\|") + (f" {marks}" if marks else "")
                out.append(f"| {method} | " + " | ".join(cells) + f" | {cell(row, 'epoch', 1, latex=False)} | "
                           f"{row['n_seeds']} | {row['selection_split']} |")  # fmt: skip
            dropped = [r for r in drows if r["dropped_duplicates"]]
            if dropped:
                out.append("")
                out.append("‡ duplicate seeds, the most recent run kept; dropped: " + "; ".join(
                    f"{r['method']}: {r['dropped_duplicates']}" for r in dropped))  # fmt: skip
            out.append("")
    return "\n".join(out) + "\n"


def _protocol_note(rows: list[dict[str, Any]]) -> str:
    if rows and rows[0]["protocol"] == MAX_OVER_EPOCHS:
        return ("per seed: maximum over epochs of each test metric separately (the study's protocol, "
                "optimistic); mean ± std over seeds, std with ddof=1; ×100; best in bold")  # fmt: skip
    return ("metrics at each run's selected epoch; † = epoch selected on the test split; "
            "mean ± std over seeds, std with ddof=1; ×100; best in bold")  # fmt: skip


_LATEX_SPECIAL = {
    "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "#": "\\#", "$": "\\$", "_": "\\_", "{": "\\{",
    "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "<": "\\textless{}",
    ">": "\\textgreater{}", "|": "\\textbar{}",
}  # fmt: skip
_LATEX_UNICODE = {
    "β": "$\\beta$", "ρ": "$\\rho$", "π": "$\\pi$", "Φ": "$\\Phi$", "×": "$\\times$", "±": "$\\pm$",
    "–": "--", "—": "---", "†": "$^\\dagger$", "‡": "$^\\ddagger$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """``text`` as LaTeX text that compiles with pdflatex: the special characters escaped, the
    Greek letters of the method names in math, other non-ASCII letters without their accents (or
    ``?``), control characters as spaces."""
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        elif ch.isascii():
            out.append(ch if ch.isprintable() else " ")
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append("".join(_LATEX_SPECIAL.get(c, c) for c in plain if c.isprintable()) or "?")
    return "".join(out)


_latex_escape = latex_escape  # the former private name


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


def run(runs: list[Run], out: Path, figures: bool = True, allow_mixed: bool = False) -> list[dict[str, Any]]:
    """Aggregate ``runs`` under both protocols and write every table (and figure) to ``out``.

    Raises :class:`MixedRunsError` (before writing anything) for a group of differing setups
    unless ``allow_mixed``."""
    rows = aggregate(runs, SELECTED, allow_mixed) + aggregate(runs, MAX_OVER_EPOCHS, allow_mixed, warn=False)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(markdown_tables(rows))
    selected = [r for r in rows if r["protocol"] == SELECTED]
    maxed = [r for r in rows if r["protocol"] == MAX_OVER_EPOCHS]
    for dataset in sorted({r["dataset"] for r in rows}, key=_dataset_rank):
        for name, protocol_rows in (
            (f"table_{dataset}", selected),
            (f"table_{dataset}_max_over_epochs", maxed),
        ):
            text = latex_single_table(protocol_rows, dataset)
            if text:
                (out / f"{name}.tex").write_text(text)
    shared = latex_shared_table(selected)
    if shared:
        (out / "table_shared.tex").write_text(shared)
    else:  # an older one would pass for this invocation's
        stale = out / "table_shared.tex"
        note = " (the older one in the output folder was removed)" if stale.exists() else ""
        stale.unlink(missing_ok=True)
        print(f"table_shared.tex not written: no CUB200, CARS196 or SOP runs{note}")
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
    parser.add_argument("--groups", nargs="+", metavar="PATTERN", help="only groups matching a shell pattern")
    parser.add_argument(
        "--exclude", nargs="+", metavar="PATTERN", help="drop runs whose group or run name matches a pattern"
    )
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets")
    parser.add_argument(
        "--allow_mixed",
        action="store_true",
        help="a group whose runs differ in a protocol flag (n_epochs, bs, arch, ...) is reported as one row "
        "per setting instead of refused",
    )
    opt = parser.parse_args(argv)
    source = opt.wandb_project or opt.runs
    filters = {"groups": opt.groups, "exclude": opt.exclude, "datasets": opt.datasets}
    if opt.wandb_project:
        found: set[tuple[str, str]] = set()

        def keep(dataset: str, group: str, name: str) -> bool:
            found.add((dataset, group))
            return keep_run(dataset, group, name, **filters)

        runs = load_wandb_runs(opt.wandb_project, keep=keep)
    else:
        everything = load_local_runs(opt.runs)
        found = {(r.dataset, r.group) for r in everything}
        runs = select_runs(everything, **filters)
    if not runs:
        if not found:
            raise SystemExit(f"no finished runs found in {source}")
        groups = ", ".join(f"{d}/{g}" for d, g in sorted(found, key=lambda t: (_dataset_rank(t[0]), t[1])))
        raise SystemExit(
            f"no finished run in {source} passes --groups/--exclude/--datasets; groups: {groups}"
        )
    try:
        rows = run(runs, Path(opt.out), figures=not opt.no_figures, allow_mixed=opt.allow_mixed)
    except MixedRunsError as err:
        parser.exit(2, f"Result_Evaluations.py: error: {err}\n")
    print(markdown_tables(rows))
    print(f"{len(runs)} runs, {len(rows) // 2} groups -> {opt.out}")
    return rows


if __name__ == "__main__":
    main()
