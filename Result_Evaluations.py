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

**Run cards** (``utilities/run_card.py``: what a run's result depends on, recorded by ``main.py`` in
``args.json`` and ``summary.json``, and in the W&B config as ``run_card``; summary.json's card is
used, else args.json's). Within a group, the seeds must also share the card's config hash (every
flag but the bookkeeping ones; the refusal names the flags that differ), weights and input
resolution (:data:`GROUP_CARD_FIELDS`). Across the groups of one dataset, i.e. the rows of one table,
the cards may differ only in the compared method (loss, miner, their flags, the embedding's
normalisation) and in provenance (commit, dirty flag): the backbone, pretrained weights, embedding
dimension, input resolution, augmentation, sampler and samples per class, batch size, epochs,
selection split and metrics, and the class split (between runs of one seed) must agree
(:data:`TABLE_CARD_FIELDS`); otherwise the tables are refused with one line naming the fields, their
values and example groups. ``--allow_mixed`` (one flag for both kinds of mixing) writes such a
table anyway, marked: "Mixed run cards" and the fields in the caption, the column ``mixed_cards`` of
``results.csv``. Every row of ``results.csv`` carries its runs' ``commit`` (7 hex digits, "(dirty)"
for uncommitted changes) and ``config_hash`` (12 hex digits), each distinct value once; every
``.tex`` starts with one comment per row: ``% run cards: <group>: commit abc1234 (dirty), config
9f8e12345678``. Runs without a card (written before main.py recorded one) are never refused: they
are left out of these comparisons, shown as "no run card" in those columns and comments, and one
``note:`` line on stderr names their groups.

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

Statistics (:mod:`evaluation.statistics` has the formulas, edge cases and references to scipy):

* **Confidence intervals over seeds**, ``--ci t`` (default: Student-t, from the sample std),
  ``bootstrap`` (percentile bootstrap of the seeds, ``--bootstrap`` resamples, ``--bootstrap_seed``)
  or ``none``; level 1 − ``--alpha``. A cell then reads mean ± half the interval's width (the
  caption says which interval, e.g. "95% Student-t interval ... over 5 seeds"); ``results.csv``
  has the bounds as ``<metric>|ci_low`` / ``<metric>|ci_high`` (the same ``|`` naming as ``|mean``);
  the figures' error bars are the interval. ``--ci none``: mean ± sample std, as before.
* **Tests against the best**: per dataset, protocol and higher-is-better metric, every method is
  compared with the one of the highest mean, ``--test auto`` (paired t-test when both ran the same
  seeds, else Welch's t-test), ``paired_t``, ``wilcoxon`` (signed ranks; both fall back to Welch
  when the seeds differ) or ``welch``; two-sided, no multiplicity correction. The bold cells are
  the best mean *and* every method the test does not find worse at ``--alpha`` (test and α in the
  caption). ``results.csv`` has ``<metric>|p`` (NaN: not testable) and ``<metric>|test`` (the test
  used; ``best``; ``n=1`` when either side has one seed, which is never bold unless it is the best),
  ``results.md`` prints ``(p=…)`` after each tested cell; identical values give p = 1.
* **Query bootstrap**, ``--query_bootstrap B`` (0: off): per run, the test queries resampled B
  times from the run's ``embeddings_testing_selected.npz`` (``main.py --save_embeddings`` keeps the
  selected epoch's embeddings there; one exact ranking pass for per-query R@k hits and AP@R), for
  R@k and MAP@R at the selected epoch; an older run without that file falls back to
  ``embeddings_testing.npz``, which holds the last evaluation, and is left out with a warning when
  that is not the selected epoch.
  ``results.csv``: ``<metric>|qci_low`` / ``|qci_high``, the mean over the group's runs of each
  run's interval (the typical test-sampling uncertainty of one run, not of the mean over seeds),
  and ``|qci_n``, the runs averaged.

Outputs (in ``--out``): ``results.csv`` (one row per dataset × group × protocol: seed count, kept
seeds, dropped duplicate runs, loss and method family, and mean/std of every metric),
``results.md`` (Markdown tables), ``table_<dataset>.tex`` and ``table_<dataset>_max_over_epochs.tex``
(the study's per-dataset table: the test Recall@k of that dataset, F1, MAP@R, NMI × 100, selected
epoch, seeds), ``table_shared.tex`` (R@1 and NMI on CUB200, CARS196 and SOP side by side,
baselines first, then the ρ-regularised ``R-`` variants; not written when none of the three
datasets has runs) and the figures as PNG and PDF.

Columns. A dataset's Recall@k columns are the ranks every run of that dataset recorded, in k
order (main.py records the ranks each dataset's papers report: CUB200/CARS196 1, 2, 4, 8; SOP 1, 10,
100, 1000; In-Shop 1, 10, 20, 30, 40; a run that recorded other ranks, e.g. R@1, 2, 4 of an older
run, narrows them to the common ones), then F1, MAP@R and NMI, the same under both protocols. The
shared table keeps the study's R@1 and NMI per dataset block: R@1 is the rank every dataset reports,
and a page-wide table of mean ± std cells holds no more (the full ranks are in each dataset's
table). ``--columns R@1 R@10 MAP@R`` sets the metric columns of every table, the shared table's
blocks included (human names or metric keys, optionally ``split/NAME``; a dataset without a column
shows "-"). ``--cost`` adds the run cost from summary.json's ``compute`` dict (training and
evaluation images/s, wall time in hours, peak GPU and host memory in GB; mean over seeds; "–"
where the runs did not record it, e.g. no GPU or an older run) to results.csv and results.md, and
writes ``table_<dataset>_cost.tex`` (Method, R@1, Seeds and the cost: the metric table with five
more columns would not fit a page). Runs that recorded the
uncertainty or verification metrics (``erc_recall@1``, ``erc_mAP@R``, ``confidence_accuracy``,
``roc_auc``, ``eer``, ``tpr@1e-3``; e.g. the probabilistic losses) also get
``table_<dataset>_uncertainty.tex`` (Method, R@1, MAP@R and those; ERC areas and EER are bolded
at their minimum) and the figure ``Uncertainty_Recall_ERC_<DATASET>`` (R@1 against ERC-R@1). Tables of more than 8 columns (three or more Recall@k) are set in
``\\footnotesize`` with narrower gaps.

Figures. Every method has one style in all of them: the colour of its family (Okabe & Ito's
colour-blind-safe palette: pair-based blue, multi-pair orange, ranking-based reddish purple,
proxy-based bluish green, classification-based vermillion, probabilistic sky blue, unknown grey; the
family comes from the run's ``--loss``, :data:`LOSS_FAMILY`), its own marker shape (shared with its
R- variant) and, for bars, the family's hatch, so they also read in greyscale; baselines are filled,
ρ-regularised R- variants hollow. Error bars are the interval the tables report (the ``--ci``
interval, or ± sample std with ``--ci none``; none with one seed). Axes name the metric, split and unit.

* ``metric_correlation_matrix``: Pearson r between the test metrics (R@k of the dataset, F1, MAP@R,
  NMI) across the baseline methods, per dataset; diverging map centred at 0 (−1 … 1), colour bar,
  each value printed in black or white by the cell's lightness;
* ``comp_metric_relation``: test R@1 against π_intra, π_inter, π_ratio and ρ(Φ) (training-class
  embeddings at the selected epoch), per dataset: the baselines with both error bars, the
  least-squares line, Pearson r in each panel's title, one legend below;
* ``Detailed_Rel_Recall_Rho_<DATASET>``: R@1 against ρ(Φ), every method named at its marker (names
  placed where they cover no marker or other name), an arrow from each baseline to its R- variant;
* ``FirstPage``: horizontal bars of the first dataset's R@1, sorted, from 0, with the value printed.

Every ``.tex`` is a ``table*`` float to ``\\input`` into a document whose preamble has
``\\usepackage{booktabs}`` (the first line says so): booktabs rules, the best mean of each
higher-is-better column in bold with the methods not significantly worse (ties: all; only where at
least two methods have a value; the embedding-space statistics π and ρ have no "better" direction
and are never bolded), a caption stating the protocol (selection split, with the test split
flagged †; the number of seeds; mean ± the interval or sample std; × 100; the test and α of the
bold cells; the markers), method names with LaTeX's special characters escaped, pure ASCII.

Deviations from the study's script: local runs first and W&B optional (the study needed the network and a hard-coded project);
no import-time work; robust grouping; ddof = 1; metrics at the selected epoch by default; every
run counts (the study silently dropped runs with ≤ 40 logged epochs; here only unfinished runs,
without ``summary.json``, and duplicate seeds are left out, and the seed count is in every table);
no ``adjustText``; a fixed family palette with markers, legends and units instead of per-figure
colours; the bar axis starts at 0 (the study's started at 87.5); columns follow each dataset's ranks.
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
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import statistics
from utilities.errors import ConfigError
from utilities.run_card import hashed_config

SELECTED = "selected"
MAX_OVER_EPOCHS = "max over epochs (test)"
DATASET_ORDER = ["cub200", "cars196", "online_products", "inshop", "in-shop", "inaturalist", "digits"]
DATASET_NAMES = {"cub200": "CUB200-2011", "cars196": "CARS196", "online_products": "SOP", "inshop": "In-Shop",
                 "in-shop": "In-Shop", "inaturalist": "iNaturalist", "digits": "Digits"}  # fmt: skip
# After the Recall@k columns of a dataset (the ranks its runs recorded), every per-dataset table has
# these: (header, split, metric, scale).
TABLE_COLUMNS = [
    ("F1", "testing", "f1", 100),
    ("MAP@R", "testing", "mAP@R", 100),
    ("NMI", "testing", "nmi", 100),
]
# The blocks of the shared table (one per dataset) without --columns: R@1, the rank every dataset
# reports, and NMI, as in the study; a page-wide table of mean ± std cells holds no more than that.
SHARED_COLUMNS = ["R@1", "NMI"]
SHARED_DATASETS = ("cub200", "cars196", "online_products")  # the shared table's blocks (those with runs)
# --cost: the ``compute`` dict of summary.json -> (header, key, divisor, decimals); mean over seeds.
COST_COLUMNS = [
    ("Train img/s", "train_images_per_s", 1, 0), ("Eval img/s", "eval_images_per_s", 1, 0),
    ("Wall (h)", "wall_time_s", 3600, 2), ("GPU mem (GB)", "peak_gpu_mem_mb", 1024, 1),
    ("Host mem (GB)", "peak_host_mem_mb", 1024, 1),
]  # fmt: skip
MISSING_COST = "–"  # a run without the compute dict (LaTeX: --)
CORRELATION_METRICS = ["f1", "mAP@R", "nmi"]  # after the dataset's Recall@k
# Embedding-space metrics of the study's figures, on the training classes ("evaluation" split).
RELATION_METRICS = [("π_intra", "dists@intra"), ("π_inter", "dists@inter"),
                    ("π_ratio", "dists@intra_over_inter"), ("ρ(Φ)", "rho_spectrum@2")]  # fmt: skip
# Axis labels of those, with what they measure and their unit.
RELATION_AXIS = {
    "dists@intra": "π_intra: mean intra-class distance (cosine distance)",
    "dists@inter": "π_inter: mean distance of class centres (cosine distance)",
    "dists@intra_over_inter": "π_ratio = π_intra / π_inter (ratio)",
    "rho_spectrum@2": "ρ(Φ): spectral decay, KL(u ‖ ŝ) (nats)",
}  # fmt: skip
# Human names of metric keys (tables, figures, --columns); e_recall@k -> R@k etc. in metric_label.
METRIC_LABELS = {
    "mAP@R": "MAP@R", "nmi": "NMI", "f1": "F1", "ami": "AMI", "mAP": "mAP", "mAP_c": "mAP (classes)",
    "mAP_1000": "mAP@1000", "mAP_lim": "mAP (limited)", "mrr": "MRR", "r_precision": "R-Precision",
    "c_nmi": "NMI (cosine)", "c_f1": "F1 (cosine)", "dists@intra": "π_intra", "dists@inter": "π_inter",
    "dists@intra_over_inter": "π_ratio", "rho_spectrum@2": "ρ(Φ)",
    "erc_recall@1": "ERC-R@1", "erc_mAP@R": "ERC-MAP@R", "confidence_accuracy": "Conf. acc.",
    "roc_auc": "AUC", "eer": "EER",
}  # fmt: skip
PRETTY = {
    "Margin_b06_Distance": "Margin (D, β=0.6)", "Margin_b12_Distance": "Margin (D, β=1.2)",
    "Triplet_Random": "Triplet (R)", "Triplet_Semihard": "Triplet (S)", "Triplet_Softhard": "Triplet (H)",
    "Triplet_Distance": "Triplet (D)", "Quadruplet_Distance": "Quadruplet (D)", "SNR_Distance": "SNR (D)",
    "MS": "Multisimilarity", "Npair": "N-Pair", "GenLifted": "GenLifted", "ProxyNCA": "ProxyNCA",
    "Histogram": "Histogram", "Contrastive": "Contrastive", "SoftTriple": "SoftTriple",
    "Angular": "Angular", "ArcFace": "ArcFace", "Softmax": "Softmax",
}  # fmt: skip
# Method families: one colour (Okabe & Ito's colour-blind-safe palette) and one bar hatch each, the
# same in every figure; the family comes from the run's --loss (criteria/), else from the group name.
LOSS_FAMILY = {
    **dict.fromkeys(("contrastive", "triplet", "margin", "quadruplet", "snr"), "pair-based"),
    **dict.fromkeys(("lifted", "npair", "angular", "multisimilarity", "circle", "supcon"), "multi-pair"),
    **dict.fromkeys(("fastap", "histogram"), "ranking-based"),
    **dict.fromkeys(("proxynca", "proxyanchor", "softtriplet"), "proxy-based"),
    **dict.fromkeys(("softmax", "arcface", "cosface", "sphereface", "adacos", "adaface", "curricularface",
                     "elasticface", "subcenter_arcface", "dsml"), "classification-based"),
    **dict.fromkeys(("hib", "pfe", "dul_cls", "dul_reg", "spe", "scf", "vmf_fl", "vmf"), "probabilistic"),
}  # fmt: skip
_LOSS_ALIASES = {"ms": "multisimilarity", "genlifted": "lifted", "softtriple": "softtriplet", "n": "npair"}
FAMILY_COLOURS = {
    "pair-based": "#0072B2", "multi-pair": "#E69F00", "ranking-based": "#CC79A7", "proxy-based": "#009E73",
    "classification-based": "#D55E00", "probabilistic": "#56B4E9", "other": "#999999",
}  # fmt: skip
FAMILY_HATCHES = {"pair-based": "", "multi-pair": "//", "ranking-based": "..", "proxy-based": "xx",
                  "classification-based": "\\\\", "probabilistic": "oo", "other": "--"}  # fmt: skip
# one marker shape per method (a method and its R- variant share it; the variant is hollow)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "d", "H", "8")
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
                    "mAP@R", "mrr", "nmi", "c_nmi", "ami", "f1", "c_f1",
                    "confidence_accuracy", "roc_auc", "tpr"}  # fmt: skip
# Where a smaller value is better: the error-versus-reject areas and the verification error rates.
LOWER_IS_BETTER = {"erc_recall", "erc_mAP@R", "eer", "fnmr"}
# The uncertainty and verification columns of table_<dataset>_uncertainty.tex (written when the
# runs recorded any of them), after R@1 and MAP@R.
UNCERTAINTY_COLUMNS = ("erc_recall@1", "erc_mAP@R", "confidence_accuracy", "roc_auc", "eer", "tpr@1e-3")
DAGGER, DDAGGER = "\\dagger", "\\ddagger"


# Run card fields (utilities/run_card.py) that every run of one table must share: everything but the
# compared method (its loss, miner and their flags, and the embedding normalisation, all inside the
# config hash) and the provenance (commit, dirty flag). The class split is compared between runs of
# the same seed (a validation split drawn with --seed differs between seeds, not between methods).
TABLE_CARD_FIELDS = (
    "backbone", "weights", "embed_dim", "input_crop", "input_resize", "augmentation", "data_sampler",
    "samples_per_class", "bs", "n_epochs", "selection_split", "selection_metrics", "class_split_hash",
)  # fmt: skip
# ... and the seeds of one group besides their PROTOCOL_FLAGS: every flag (the config hash) and what
# the flags do not pin down (the weights file's content, the library's input configuration).
GROUP_CARD_FIELDS = ("config_hash", "weights", "input_crop", "input_resize")
NO_CARD = "no run card"


class MixedRunsError(ValueError):
    """Runs that may not share a table: a group whose runs differ in a protocol flag or run card
    field, or a dataset whose groups' run cards differ (one line: where, the fields, example values)."""


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
    compute: dict[str, Any] = field(default_factory=dict)  # summary.json "compute": throughput, memory, time
    card: dict[str, Any] | None = None  # the run card (summary.json's, else args.json's); None: an older run
    config: dict[str, Any] = field(default_factory=dict)  # the flags the card's config hash covers
    folder: str = ""  # a local run's folder: --query_bootstrap reads its embeddings_testing.npz


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
            info = json.loads((folder / "args.json").read_text())
            args = info["args"]
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
            compute=summary.get("compute") if isinstance(summary.get("compute"), dict) else {},
            card=_card(summary.get("run_card"), info.get("run_card")), config=hashed_config(args),
            folder=str(folder),
        ))  # fmt: skip
    return runs


def _card(*candidates: Any) -> dict[str, Any] | None:
    """The first run card among ``candidates`` (summary.json's: the run's end; args.json's: its start)."""
    return next((c for c in candidates if isinstance(c, dict) and c), None)


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
        card = _card(config.pop("run_card", None))  # main.py logs the card with its flags
        summary = dict(wb_run.summary)
        if "selected_epoch" not in summary or "dataset" not in config:
            continue  # unfinished, or not written by main.py
        group = _group(config, wb_run.name)
        if keep is not None and not keep(config["dataset"], group, wb_run.name):
            continue
        selected: dict[str, dict[str, Any]] = defaultdict(dict)
        compute: dict[str, Any] = {}
        for key, value in summary.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "metrics":
                selected[parts[1]][parts[2]] = value
            elif len(parts) == 2 and parts[0] == "compute":  # the logger flattens summary.json's dicts
                compute[parts[1]] = value
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
            compute=compute, card=card, config=hashed_config(config),
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


def method_family(loss: str | None, group: str = "") -> str:
    """The family of a method (:data:`LOSS_FAMILY`): from its ``--loss``, else from the first word
    of its group name after the dataset prefix (``CUB_MS`` -> multi-pair); "other" if unknown."""
    if loss and loss.lower() in LOSS_FAMILY:
        return LOSS_FAMILY[loss.lower()]
    m = _PREFIX.match(group)
    word = re.split(r"[_\W]", group[m.end() :] if m else group)[0].lower()
    return LOSS_FAMILY.get(_LOSS_ALIASES.get(word, word), "other")


def metric_label(metric: str) -> str:
    """The human name of a metric key (``[split/]metric``): ``e_recall@1`` -> R@1, ``mAP@R`` ->
    MAP@R, ``nmi`` -> NMI, ``rho_spectrum@2`` -> ρ(Φ); an unknown name is returned unchanged."""
    metric = metric.split("/", 1)[-1]
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    family, _, param = metric.partition("@")
    named = {"e_recall": "R@{}", "c_recall": "R@{} (cosine)", "precision": "P@{}", "rho_spectrum": "ρ@{}",
             "erc_recall": "ERC-R@{}", "tpr": "TPR@FPR={}", "fnmr": "FNMR@FMR={}"}  # fmt: skip
    return named[family].format(param) if family in named and param else metric


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
    # the run's cost does not depend on the protocol
    out.update({f"compute/{k}": float(v) for k, v in run.compute.items() if _is_number(v)})
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

    A group whose runs differ in a :data:`PROTOCOL_FLAGS` flag, or whose run cards differ in a
    :data:`GROUP_CARD_FIELDS` field (runs without a card are not compared), raises
    :class:`MixedRunsError` (``allow_mixed``: one group per setting instead). Of several finished
    runs of one seed only the most recent is kept; the others go to ``dropped`` (one warning line
    per group on stderr)."""
    by_group: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_group[(run.dataset, run.group)].append(run)
    out = []
    for (dataset, group), members in by_group.items():
        settings = {id(r): {f: _flag_text(r.flags.get(f)) for f in PROTOCOL_FLAGS} for r in members}
        differing = [f for f in PROTOCOL_FLAGS if len({settings[id(r)][f] for r in members}) > 1]
        # run card fields: compared between the runs that have a card (an older run is not refused)
        carded = [r for r in members if r.card is not None]
        card_differing = [f for f in GROUP_CARD_FIELDS if len({_card_text(r, f) for r in carded}) > 1]
        for r in members:
            settings[id(r)].update({f: _card_text(r, f) for f in card_differing})
        differing += card_differing
        if differing and not allow_mixed:
            flag = differing[0]
            values: dict[str, list[str]] = defaultdict(list)
            for r in sorted(members, key=lambda r: _natural(r.name)):
                values[settings[id(r)][flag]].append(r.name)
            listed = "; ".join(f"{flag}={v}: {_names(n)}" for v, n in values.items())
            if flag == "config_hash":  # name the flags behind it
                listed += f"; differing flags: {', '.join(_differing_flags(carded)) or 'none recorded'}"
            also = f" (also {', '.join(differing[1:])})" if len(differing) > 1 else ""
            where = f"--{flag}" if flag in PROTOCOL_FLAGS else f"the run card's {flag}"
            raise MixedRunsError(
                f"{dataset}/{group}: its runs differ in {where}{also} ({listed}); runs of different setups "
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


def _card_text(run: Run, name: str) -> str:
    """A run card field as text (SHA-256 digests shortened to 12 hex digits); "no run card" for an
    older run."""
    if run.card is None:
        return NO_CARD
    value = run.card.get(name)
    if isinstance(value, str):  # a hash, or a weights file's "sha256:<hash>"
        return re.sub(r"[0-9a-f]{64}", lambda m: m.group(0)[:12], value)
    return _flag_text(value)


def _differing_flags(runs: list[Run]) -> list[str]:
    """The flags (of the config hash) whose values differ between ``runs``."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({_flag_text(r.config.get(k)) for r in runs}) > 1]


def _natural(name: str) -> list[Any]:
    """Sort key: "x_s1_10" after "x_s1_9" (numbers compared as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def aggregate(
    runs: Iterable[Run], protocol: str = SELECTED, allow_mixed: bool = False, warn: bool = True
) -> list[dict[str, Any]]:
    """One row per (dataset, group[, setting]): seeds, selection split, dropped duplicates, and
    mean / std (ddof=1) per quantity. Groups are formed by :func:`group_runs`. Intervals and tests
    are added by :func:`add_statistics`."""
    rows = []
    for g in group_runs(runs, allow_mixed=allow_mixed, warn=warn):
        members = sorted(g.members, key=lambda r: r.seed)
        values = [per_run_values(r, protocol) for r in members]
        method, regularised = method_name(g.group)
        if g.setting:
            method = f"{method} [{g.setting}]"
        split_names = sorted({r.selection_split for r in members if r.selection_split})
        loss = "/".join(sorted({str(r.flags["loss"]) for r in members if r.flags.get("loss")}))
        row: dict[str, Any] = {
            "dataset": g.dataset, "group": g.group, "setting": g.setting, "method": method,
            "regularised": regularised, "loss": loss, "family": method_family(loss, g.group),
            "protocol": protocol, "n_seeds": len(members),
            "seeds": " ".join(str(r.seed) for r in members),
            "dropped_duplicates": " ".join(sorted((r.name for r in g.dropped), key=_natural)),
            "selection_split": "/".join(split_names) if protocol == SELECTED else "testing (max per metric)",
            **card_columns(members),
        }  # fmt: skip
        for key in sorted({k for v in values for k in v}):
            x = np.array([v[key] for v in values if key in v], dtype=np.float64)
            row[f"{key}|mean"] = float(x.mean())
            row[f"{key}|std"] = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
            row[f"{key}|n"] = len(x)
        # for add_statistics (intervals, tests between methods) and add_query_intervals; fields
        # starting with "_" are not written to results.csv
        row["_per_seed"] = {k: {r.seed: v[k] for r, v in zip(members, values, strict=True) if k in v}
                            for k in {k for v in values for k in v}}  # fmt: skip
        row["_runs"] = members
        rows.append(row)
    rows.sort(
        key=lambda r: (_dataset_rank(r["dataset"]), r["regularised"], r["method"], _natural(r["setting"]))
    )
    return rows


def _dataset_rank(dataset: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


# ---- run cards -----------------------------------------------------------------------------------


def check_cards(runs: Iterable[Run], allow_mixed: bool = False) -> dict[str, list[str]]:
    """``{dataset: the TABLE_CARD_FIELDS its runs differ in}`` for the datasets whose tables would
    mix protocols (the others are left out). Only runs with a run card are compared; the class
    split only between runs of one seed and cross-validation fold. Raises :class:`MixedRunsError` (one line: the dataset, the
    fields, their values with example groups) unless ``allow_mixed``."""
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.card is not None:
            by_dataset[run.dataset].append(run)
    out: dict[str, list[str]] = {}
    for dataset in sorted(by_dataset, key=_dataset_rank):
        members = sorted(by_dataset[dataset], key=lambda r: (_natural(r.group), r.seed, _natural(r.name)))
        found: dict[str, str] = {}  # field -> its values with example groups
        for name in TABLE_CARD_FIELDS:
            # the class split differs by design between seeds (--use_tv_split draws per seed) and
            # between the folds of a cross-validation: compare it within one (seed, fold)
            pools: dict[tuple[int, Any] | None, list[Run]] = defaultdict(list)
            for r in members:
                pools[(r.seed, r.config.get("cv_fold")) if name == "class_split_hash" else None].append(r)
            for key, pool in sorted(
                pools.items(), key=lambda t: (-1, "") if t[0] is None else (t[0][0], str(t[0][1]))
            ):
                values: dict[str, list[str]] = defaultdict(list)
                for r in pool:
                    if r.group not in values[_card_text(r, name)]:
                        values[_card_text(r, name)].append(r.group)
                if len(values) > 1:
                    fold = "" if key is None or key[1] is None else f", fold {key[1]}"
                    seed_text = "" if key is None else f"seed {key[0]}{fold}: "
                    found[name] = seed_text + "; ".join(f"{v}: {_names(g, 2)}" for v, g in values.items())
                    break
        if found and not allow_mixed:
            listed = " | ".join(f"{f}: {v}" for f, v in found.items())
            raise MixedRunsError(
                f"{dataset}: the run cards of its table differ in {', '.join(found)} ({listed}); only the "
                "compared method (loss, miner, their flags) may differ between the rows of one table: "
                "remove or --exclude the stray runs, or pass --allow_mixed to write the table marked as mixed"
            )
        if found:
            out[dataset] = list(found)
    return out


def card_columns(runs: Iterable[Run]) -> dict[str, str]:
    """``commit`` and ``config_hash`` of a row (results.csv, the .tex comments): each distinct value
    of its runs once, joined by " / ": 7 hex digits of the commit with "(dirty)" for uncommitted
    changes ("no git" where unknown), 12 of the config hash; "no run card" for runs without one."""
    commits: list[str] = []
    configs: list[str] = []
    for r in runs:
        if r.card is None:
            commits.append(NO_CARD)
            configs.append(NO_CARD)
            continue
        commit = r.card.get("git_commit")
        commits.append((commit[:7] if commit else "no git") + (" (dirty)" if r.card.get("git_dirty") else ""))
        configs.append(_card_text(r, "config_hash"))
    return {"commit": " / ".join(dict.fromkeys(commits)), "config_hash": " / ".join(dict.fromkeys(configs))}


def _with_card_comments(text: str, rows: list[dict[str, Any]]) -> str:
    """``text`` (a .tex table) with one comment line per row after its first line:
    ``% run cards: <group>: commit abc1234 (dirty), config 9f8e12345678``."""
    lines = []
    for row in rows:
        name = row["group"] + (f" [{row['setting']}]" if row.get("setting") else "")
        if row.get("commit") == NO_CARD:
            about = NO_CARD
        else:
            about = f"commit {row.get('commit', NO_CARD)}, config {row.get('config_hash', NO_CARD)}"
        line = f"% run cards: {name}: {about}"
        lines.append(" ".join(line.encode("ascii", "replace").decode().split()))  # one ASCII line
    first, _, rest = text.partition("\n")
    return "\n".join([first, *dict.fromkeys(lines), rest])


# ---- statistics: intervals, tests against the best, query bootstrap ------------------------------


def add_statistics(
    rows: list[dict[str, Any]], ci: str = "t", alpha: float = 0.05, n_resamples: int = 10000,
    test: str = "auto", seed: int = 0,
) -> None:  # fmt: skip
    """In place, on rows of :func:`aggregate`: ``<key>|ci_low`` / ``|ci_high`` (``ci``: ``t`` or
    ``bootstrap`` over the seeds, level 1 − ``alpha``; none with ``ci="none"``, for one seed and for
    the cost) and, per dataset, protocol and higher-is-better metric, the comparison of every row
    with the best mean: ``|p`` (two-sided p-value; NaN when untestable) and ``|test`` (the test
    used, ``best`` for the best row); see :mod:`evaluation.statistics`. Also the row fields ``ci``,
    ``alpha``, ``test`` (and ``ci_resamples`` for the bootstrap), so that tables can say what they show."""
    statistics.check_options(ci=ci, alpha=alpha, n_resamples=n_resamples, test=test)
    for row in rows:
        row.update({"ci": ci, "alpha": alpha, "test": test})
        if ci == "bootstrap":
            row["ci_resamples"] = n_resamples
        if ci == "none":
            continue
        for key, per_seed in row.get("_per_seed", {}).items():
            if len(per_seed) > 1 and not key.startswith("compute/"):
                values = [per_seed[s] for s in sorted(per_seed)]
                low, high = statistics.confidence_interval(values, ci, alpha, n_resamples, seed)
                row[f"{key}|ci_low"], row[f"{key}|ci_high"] = low, high
    blocks: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        blocks[(row["dataset"], row["protocol"])].append(row)
    for block in blocks.values():
        keys = {k for r in block for k in r.get("_per_seed", {})}
        for key in sorted(k for k in keys if direction(k.split("/", 1)[-1])):
            have = [r for r in block if r.get("_per_seed", {}).get(key)]
            if len(have) < 2:
                continue
            sign = direction(key.split("/", 1)[-1])
            best = max(have, key=lambda r: sign * r[f"{key}|mean"])
            for r in have:
                if r is best:
                    r[f"{key}|test"] = "best"
                    continue
                result = statistics.compare(best["_per_seed"][key], r["_per_seed"][key], test)
                r[f"{key}|p"], r[f"{key}|test"] = result.p, result.test


def add_query_intervals(
    rows: list[dict[str, Any]], n_resamples: int, alpha: float = 0.05, seed: int = 0
) -> None:
    """``--query_bootstrap``, in place on the ``selected`` rows: for every test Recall@k and MAP@R
    of a row, ``|qci_low`` / ``|qci_high``, the mean over the group's runs of each run's
    query-bootstrap interval (its own test queries resampled, :func:`evaluation.statistics.query_intervals`),
    and ``|qci_n``, the runs it averages. A run counts when its folder holds the embeddings of its
    selected epoch: ``embeddings_testing_selected.npz`` (``main.py --save_embeddings``), or for an
    older run ``embeddings_testing.npz`` if its last evaluation was the selected epoch; the others
    are left out: one warning line per group names those runs and why."""
    statistics.check_options(alpha=alpha, query_resamples=n_resamples)
    for row in rows:
        if row["protocol"] != SELECTED:
            continue
        names = sorted(k.split("/", 1)[1] for k in row.get("_per_seed", {})
                       if k.startswith("testing/") and statistics.QUERY_METRIC.fullmatch(k.split("/", 1)[1]))  # fmt: skip
        if not names:
            continue
        found: dict[str, list[statistics.QueryInterval]] = defaultdict(list)
        skipped = []
        for run in row["_runs"]:
            path = Path(run.folder) / "embeddings_testing_selected.npz"  # main.py keeps the selected epoch's
            if not path.is_file():
                path = path.with_name("embeddings_testing.npz")  # an older run: its last epoch
            if not run.folder or not path.is_file():
                skipped.append(f"{run.name} (no {'embeddings_testing.npz' if run.folder else 'run folder'})")
                continue
            try:
                data = statistics.load_split(path)
            except ValueError as err:
                skipped.append(f"{run.name} ({err})")
                continue
            epoch = int(data["epoch"]) if "epoch" in data else None
            if epoch is None or epoch != run.selected_epoch:
                skipped.append(
                    f"{run.name} (embeddings of epoch {epoch}, selected epoch {run.selected_epoch})"
                )
                continue
            for name, q in statistics.query_intervals(data, names, n_resamples=n_resamples, alpha=alpha,
                                                      seed=seed).items():  # fmt: skip
                found[name].append(q)
        for name, intervals in found.items():
            row[f"testing/{name}|qci_low"] = float(np.mean([q.low for q in intervals]))
            row[f"testing/{name}|qci_high"] = float(np.mean([q.high for q in intervals]))
            row[f"testing/{name}|qci_n"] = len(intervals)
        if skipped:
            print(f"warning: {row['dataset']}/{row['group']}: --query_bootstrap left out {len(skipped)} of "
                  f"{len(row['_runs'])} runs: {_names(skipped)}", file=sys.stderr)  # fmt: skip


def _half_width(row: dict[str, Any], key: str) -> float | None:
    """What a cell shows after ±: half the confidence interval's width, else the sample std."""
    low, high = row.get(f"{key}|ci_low"), row.get(f"{key}|ci_high")
    if _is_number(low) and _is_number(high):
        return (high - low) / 2
    std = row.get(f"{key}|std")
    return std if _is_number(std) else None


def _not_worse(row: dict[str, Any], key: str) -> bool:
    """Whether the test against the column's best did not reject at the row's alpha."""
    p = row.get(f"{key}|p")
    return _is_number(p) and p >= row.get("alpha", 0.05)


def _p_text(row: dict[str, Any] | None, key: str) -> str:
    p = row.get(f"{key}|p") if row else None
    if not _is_number(p):
        return ""
    return " (p<0.001)" if p < 0.001 else f" (p={p:.3f})"


_TEST_WORDS = {"paired_t": "paired t-test over the common seeds",
               "wilcoxon": "Wilcoxon signed-rank test over the common seeds", "welch": "Welch's t-test"}  # fmt: skip


def _spread_words(rows: list[dict[str, Any]], latex: bool = True) -> str:
    """What follows the ± of a cell, in words: the sample std or the confidence interval."""
    pm, ddof, pct = ("$\\pm$", "ddof${}=1$", "\\%") if latex else ("±", "ddof=1", "%")
    ci = rows[0].get("ci", "none") if rows else "none"
    if ci == "none":
        return f"mean {pm} sample standard deviation ({ddof})"
    level = f"{100 * (1 - rows[0]['alpha']):g}{pct}"
    if ci == "t":
        return f"mean {pm} half-width of the {level} Student-t interval of the mean (sample std, {ddof})"
    return (f"mean {pm} half the width of the {level} percentile-bootstrap interval of the mean "
            f"({rows[0]['ci_resamples']} resamples of the seeds; its bounds are in results.csv)")  # fmt: skip


def _bold_words(rows: list[dict[str, Any]], columns: list[Column] | None, latex: bool = True) -> str:
    """The rule of the bold cells: the best mean, and what the tests against it did not reject."""
    keys = [c.key for c in columns or [] if not c.cost]
    used = {r.get(f"{k}|test") for r in rows for k in keys} - {None, "best"}
    named = [t for t in ("paired_t", "wilcoxon", "welch") if t in used]
    if not named:
        return "Best mean per column in bold" + (
            " (no significance test: one seed)." if statistics.UNTESTED in used else "."
        )
    words = [_TEST_WORDS[t] for t in named]
    if "welch" in named and rows[0].get("test") != "welch":
        words[-1] += " where the seeds differ"
    alpha = f"$\\alpha = {rows[0]['alpha']:g}$" if latex else f"α = {rows[0]['alpha']:g}"
    text = (f"In bold: the best mean per column and every method not significantly worse than it ({_and(words)}, "
            f"each method against the best, two-sided, {alpha}; no correction for multiple comparisons")  # fmt: skip
    if statistics.UNTESTED in used:
        text += "; a method with one seed, or compared with a best of one seed, is not tested"
    return text + ")."


# ---- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` is a row key without ``|mean`` (``testing/e_recall@10``,
    ``compute/wall_time_s``), shown × ``scale``. A cost column shows the mean over seeds only, is
    never bold and shows "–" where no run recorded it."""

    header: str
    key: str
    scale: float = 100
    cost: bool = False
    digits: int = 2


_RECALL_KEY = re.compile(r"testing/e_recall@(\d+)\|mean")


def recall_ranks(rows: list[dict[str, Any]]) -> list[int]:
    """The k of the test Recall@k that every run of ``rows`` (one dataset) recorded, in k order
    (each dataset's runs record the ranks its papers report: SOP 1, 10, 100, 1000; In-Shop 1, 10, 20,
    30, 40; ...); when they share none, every k any run recorded."""
    found = [{int(m.group(1)) for k in r if (m := _RECALL_KEY.fullmatch(k))} for r in rows]
    every = [{k for k in ks if r.get(f"testing/e_recall@{k}|n", r["n_seeds"]) == r["n_seeds"]}
             for r, ks in zip(rows, found, strict=True)]  # fmt: skip
    common = set.intersection(*every) if every else set()
    return sorted(common or set().union(*found))


def parse_column(name: str) -> Column:
    """A ``--columns`` item: a human name (``R@10``, ``MAP@R``, ``NMI``, ``F1``, ``P@1``, ``ρ(Φ)``) or
    a metric key of ``metrics/`` (``e_recall@10``, ``mAP@R``, ``nmi``), optionally after a split
    (``validation/R@1``; default: the test split). Raises ValueError for anything else."""
    split, _, metric = name.strip().rpartition("/")
    split = split or "testing"
    human = {label.lower(): key for key, label in METRIC_LABELS.items()}
    if m := re.fullmatch(r"R@(\d+)", metric, re.IGNORECASE):
        metric = f"e_recall@{m.group(1)}"
    elif m := re.fullmatch(r"P@(\d+)", metric, re.IGNORECASE):
        metric = f"precision@{m.group(1)}"
    elif metric.lower() in human:
        metric = human[metric.lower()]
    elif metric.lower() in ("rho", "ρ"):
        metric = "rho_spectrum@2"
    elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*(@-?[A-Za-z0-9]+)?", metric) or not re.fullmatch(
        r"\w+", split
    ):
        raise ValueError(
            f"unknown column {name!r} (e.g. R@1, R@10, F1, MAP@R, NMI, e_recall@100, validation/R@1)"
        )
    label = metric_label(metric)
    return Column(label if split == "testing" else f"{label} ({split})", f"{split}/{metric}",
                  100 if direction(metric) else 1)  # fmt: skip


def cost_columns() -> list[Column]:
    """The ``--cost`` columns (:data:`COST_COLUMNS`)."""
    return [Column(h, f"compute/{k}", 1 / div, cost=True, digits=d) for h, k, div, d in COST_COLUMNS]


def table_columns(
    rows: list[dict[str, Any]], dataset: str, names: list[str] | None = None, cost: bool = False
) -> list[Column]:
    """The columns of ``dataset``'s table: ``names`` (``--columns``) when given, else the test
    Recall@k its runs recorded (:func:`recall_ranks`; at the selected epoch) then F1, MAP@R, NMI;
    the :func:`cost_columns` after them with ``cost``."""
    if names:
        columns = [parse_column(n) for n in names]
    else:
        mine = [r for r in rows if r["dataset"] == dataset]
        ranks = recall_ranks([r for r in mine if r["protocol"] == SELECTED] or mine)
        columns = [Column(f"R@{k}", f"testing/e_recall@{k}") for k in ranks]
        columns += [Column(h, f"{split}/{metric}", scale) for h, split, metric, scale in TABLE_COLUMNS]
    return columns + (cost_columns() if cost else [])


def direction(metric: str) -> int:
    """+1 where a larger ``metric`` (a name of ``metrics/``, e.g. ``e_recall@1``) is better, −1
    where a smaller one is (``erc_*``, ``eer``, ``fnmr@*``), 0 for the statistics without a
    "better" direction (``dists@*``, ``rho_spectrum@*``) and anything unknown, which are then
    never bolded."""
    for table, sign in ((HIGHER_IS_BETTER, 1), (LOWER_IS_BETTER, -1)):
        if metric in table or metric.partition("@")[0] in table:
            return sign
    return 0


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (:func:`direction` +1)."""
    return direction(metric) > 0


def best_values(rows: list[dict[str, Any]], columns: list[tuple[str, float]]) -> dict[str, float]:
    """``{key: best displayed mean}`` over ``rows`` for each ``(key, scale)`` with a better
    direction (the largest, or the smallest for a lower-is-better metric) that at least two rows
    have (a lone value is not "best" of anything)."""
    best = {}
    for key, scale in columns:
        sign = direction(key.split("/", 1)[-1])
        if not sign:
            continue
        shown = [_shown(r, key, scale) for r in rows]
        shown = [v for v in shown if v is not None]
        if len(shown) >= 2:
            best[key] = max(shown) if sign > 0 else min(shown)
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
    """``$mean\\pm std$`` (× ``scale``), or ``$mean\\pm h$`` with h half the width of the row's
    confidence interval (:func:`add_statistics`); ``$mean$ (n=1)`` for a single value; ``-`` for
    none. Bold where the shown mean equals ``best[key]`` or, where the row was tested against the
    column's best, where the test did not reject; ``mark`` (LaTeX math, e.g. ``\\dagger``) as a
    superscript."""
    mean = row.get(f"{key}|mean") if row else None
    if mean is None:
        return "-"
    std = _half_width(row, key)
    bold = best is not None and key in best and (_shown(row, key, scale) == best[key] or _not_worse(row, key))
    single = std is None
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


def column_cell(
    row: dict[str, Any] | None, column: Column, latex: bool = True, best: dict[str, float] | None = None,
    mark: str = "",
) -> str:  # fmt: skip
    """The cell of ``column``: :func:`cell` for a metric; the mean for a cost column ("–" / ``--``
    without a value)."""
    if not column.cost:
        return cell(row, column.key, column.scale, latex, best, mark)
    mean = row.get(f"{column.key}|mean") if row else None
    if mean is None:
        return "--" if latex else MISSING_COST
    return f"{mean * column.scale:.{column.digits}f}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _on_split(columns: list[Column]) -> str:
    """What the metric columns are, in words: "R@1, R@2 and NMI on the test split"."""
    text = _and([c.header for c in columns])
    return text + " on the test split" if all(c.key.startswith("testing/") for c in columns) else text


def _cost_note(columns: list[Column]) -> str:
    if not any(c.cost for c in columns):
        return ""
    return ("Cost per run, mean over seeds: training and evaluation throughput (images/s), wall time (hours), "
            "peak GPU and host memory (GB); -- where the runs did not record it (no GPU, or an older run).")  # fmt: skip


def latex_single_table(rows: list[dict[str, Any]], dataset: str, columns: list[Column] | None = None) -> str:
    """The study's per-dataset table (§10): Method & the dataset's Recall@k & F1 & MAP@R & NMI &
    Epoch & Seeds (``columns``: :func:`table_columns`, derived from ``rows`` when None; cost columns
    go to :func:`latex_cost_table`), baselines then R- variants; "" when ``rows`` has nothing for
    ``dataset``."""
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        return ""
    columns = table_columns(rows, dataset) if columns is None else columns
    metric_columns = [c for c in columns if not c.cost]
    best = best_values(rows, [(c.key, c.scale) for c in metric_columns])
    body = _grouped_body(rows, lambda row: [
        latex_escape(row["method"]) + _sup(_marks(row)),
        *[column_cell(row, c, best=best) for c in metric_columns], cell(row, "epoch", 1), str(row["n_seeds"]),
    ])  # fmt: skip
    protocol = rows[0]["protocol"]
    name = DATASET_NAMES.get(dataset, dataset)
    what = f"{latex_escape(name)}: " + latex_escape(_on_split(metric_columns))
    epoch = "the selected epoch" if protocol == SELECTED else "the epoch of the R@1 maximum"
    extra = f"Epoch: {epoch} (mean over seeds)."
    caption = _caption(rows, what, protocol, bold=bool(best), extra=extra, columns=metric_columns)
    header = (
        "Method & " + " & ".join(latex_escape(c.header) for c in metric_columns) + " & Epoch & Seeds \\\\"
    )
    label = f"tab:{dataset}" + ("" if protocol == SELECTED else "-max-over-epochs")
    return _latex_table(caption, label, 3 + len(metric_columns), [header, "\\midrule"], body)


def _grouped_body(
    rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], list[str]]
) -> list[list[str] | str]:
    """One table line of ``cells(row)`` per row: the baselines, then a rule, then the
    rho-regularised variants (rows arrive in that order)."""
    body: list[list[str] | str] = []
    previous = False
    for row in rows:
        if row["regularised"] and body and not previous:
            body.append("\\midrule")
        previous = row["regularised"]
        body.append(cells(row))
    return body


def latex_cost_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """``--cost``: Method & R@1 & Seeds & the :func:`cost_columns` of ``dataset``'s runs (the
    ``selected`` rows; "--" where the runs did not record a quantity); "" without rows. A table of
    its own: the metric table with five more columns would not fit a page."""
    rows = [r for r in rows if r["dataset"] == dataset and r["protocol"] == SELECTED]
    if not rows:
        return ""
    recall = Column("R@1", "testing/e_recall@1")
    costs = cost_columns()
    best = best_values(rows, [(recall.key, recall.scale)])
    body = _grouped_body(rows, lambda row: [
        latex_escape(row["method"]) + _sup(_marks(row)), column_cell(row, recall, best=best),
        str(row["n_seeds"]), *[column_cell(row, c) for c in costs],
    ])  # fmt: skip
    what = (
        f"{latex_escape(DATASET_NAMES.get(dataset, dataset))}: cost of the runs, with R@1 on the test split"
    )
    caption = _caption(rows, what, SELECTED, bold=bool(best), extra=_cost_note(costs), columns=[recall])
    header = "Method & R@1 & Seeds & " + " & ".join(latex_escape(c.header) for c in costs) + " \\\\"
    return _latex_table(caption, f"tab:{dataset}-cost", 3 + len(costs), [header, "\\midrule"], body)


def uncertainty_columns(rows: list[dict[str, Any]], dataset: str) -> list[Column]:
    """R@1, MAP@R and the :data:`UNCERTAINTY_COLUMNS` that some ``selected`` row of ``dataset``
    recorded on the test split; [] when none did (no uncertainty table)."""
    mine = [r for r in rows if r["dataset"] == dataset and r["protocol"] == SELECTED]
    have = [m for m in UNCERTAINTY_COLUMNS if any(f"testing/{m}|mean" in r for r in mine)]
    return [parse_column(m) for m in ("e_recall@1", "mAP@R", *have)] if have else []


def latex_uncertainty_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """Method & R@1 & MAP@R & the uncertainty (error-versus-reject areas, confidence accuracy) and
    verification (ROC AUC, EER, TPR@FPR) metrics of ``dataset``'s ``selected`` rows, each bolded
    in its own better direction (lower for ERC and EER); "" when no run recorded them."""
    columns = uncertainty_columns(rows, dataset)
    rows = [r for r in rows if r["dataset"] == dataset and r["protocol"] == SELECTED]
    if not columns or not rows:
        return ""
    best = best_values(rows, [(c.key, c.scale) for c in columns])
    body = _grouped_body(rows, lambda row: [
        latex_escape(row["method"]) + _sup(_marks(row)), *[column_cell(row, c, best=best) for c in columns],
        str(row["n_seeds"]),
    ])  # fmt: skip
    name = DATASET_NAMES.get(dataset, dataset)
    what = f"{latex_escape(name)}: retrieval, uncertainty and verification on the test split"
    extra = (
        "ERC: area under the error-versus-reject curve of the metric, rejecting the least confident "
        "queries first (lower is better); confidence: the predicted concentration or variance, the "
        "embedding norm for deterministic methods. EER: equal error rate (lower is better)."
    )
    caption = _caption(rows, what, SELECTED, bold=bool(best), extra=extra, columns=columns)
    header = "Method & " + " & ".join(latex_escape(c.header) for c in columns) + " & Seeds \\\\"
    return _latex_table(caption, f"tab:{dataset}-uncertainty", 2 + len(columns), [header, "\\midrule"], body)


def latex_shared_table(
    rows: list[dict[str, Any]], datasets: list[str] | None = None, columns: list[str] | None = None
) -> str:
    """One block of ``columns`` per dataset (default :data:`SHARED_COLUMNS`, R@1 and NMI as in the
    study: R@1 is the rank every dataset reports; a dataset without a column shows "-"), for
    CUB200, CARS196 and SOP (those with runs), one row per method: baselines first, then the R-
    variants; "" when none of the datasets has runs."""
    datasets = datasets or [d for d in SHARED_DATASETS if any(r["dataset"] == d for r in rows)]
    rows = [r for r in rows if r["dataset"] in datasets]
    if not datasets or not rows:
        return ""
    shown = [parse_column(c) for c in (columns or SHARED_COLUMNS)]
    by_method: dict[tuple[bool, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        key = (row["regularised"], row["method"])
        if row["dataset"] in by_method[key]:  # two groups print as the same method: keep both rows
            key = (row["regularised"], f"{row['method']} [{row['group']}]")
        by_method[key][row["dataset"]] = row
    keys = [(c.key, c.scale) for c in shown]
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
            cells += [
                column_cell(row, c, best=best[d], mark=mark if i == 0 else "") for i, c in enumerate(shown)
            ]
        body.append(cells)
    names = [latex_escape(DATASET_NAMES.get(d, d)) for d in datasets]
    n = len(shown)
    header = [
        " & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{name}}}" for name in names) + " \\\\",
        "".join(f"\\cmidrule(lr){{{2 + n * i}-{1 + n * (i + 1)}}}" for i in range(len(datasets))),
        "Method & "
        + " & ".join(" & ".join(latex_escape(c.header) for c in shown) for _ in datasets)
        + " \\\\",
        "\\midrule",
    ]
    what = latex_escape(_on_split(shown)) + " of " + _and(names)
    caption = _caption(rows, what, rows[0]["protocol"], bold=any(best.values()), columns=shown)
    return _latex_table(caption, "tab:shared", 1 + n * len(datasets), header, body)


def _caption(
    rows: list[dict[str, Any]], what: str, protocol: str, bold: bool, extra: str = "",
    columns: list[Column] | None = None,
) -> str:  # fmt: skip
    """The protocol in words: selection split (the test split flagged), seeds, mean ± std or the
    confidence interval, × 100, the rule of the bold cells (the test and its α)."""
    unscaled = [latex_escape(c.header) for c in columns or [] if c.scale != 100]
    text = f"{what} ($\\times 100$" + (f"; {_and(unscaled)} as computed" if unscaled else "") + "), "
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
    std = _spread_words(rows)
    spread = "standard deviation" if std.endswith("(ddof${}=1$)") else "interval"
    if seeds == [1]:
        text += f" One seed per method: no {spread}."
    else:
        count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}--{seeds[-1]}"
        text += f" {std[0].upper() + std[1:]} over {count} seeds per method"
        text += f"; (n=1): a single seed, no {spread}." if seeds[0] == 1 else "."
    if bold:
        text += " " + _bold_words(rows, columns)
    if extra:
        text += f" {extra}"
    if any(r.get("dropped_duplicates") for r in rows):
        text += (" $^\\ddagger$: a seed had several finished runs; only the most recent was kept (the "
                 "dropped runs: column dropped\\_duplicates of results.csv).")  # fmt: skip
    mixed = list(dict.fromkeys(f for r in rows for f in (r.get("mixed_cards") or "").split(", ") if f))
    if mixed:  # --allow_mixed wrote a table whose runs are not like for like
        text += (f" \\textbf{{Mixed run cards}}: the runs differ in {latex_escape(_and(mixed))}, not only in the "
                 "method (written with allow\\_mixed; column mixed\\_cards of results.csv).")  # fmt: skip
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
        "\\small" if columns <= 8 else "\\footnotesize",  # the study had 8 columns; CUB now 10, SOP 11
        f"\\setlength{{\\tabcolsep}}{{{4 if columns <= 8 else 3}pt}}",
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


def markdown_tables(rows: list[dict[str, Any]], columns: list[str] | None = None, cost: bool = False) -> str:
    """``results.md``: one table per dataset and protocol, with the columns of :func:`table_columns`."""
    out = []
    datasets = sorted({r["dataset"] for r in rows}, key=_dataset_rank)
    shown = {d: table_columns(rows, d, columns, cost) for d in datasets}
    for protocol in (SELECTED, MAX_OVER_EPOCHS):
        prow = [r for r in rows if r["protocol"] == protocol]
        for dataset in [d for d in datasets if any(r["dataset"] == d for r in prow)]:
            drows = [r for r in prow if r["dataset"] == dataset]
            metric_columns = [c for c in shown[dataset] if not c.cost]
            costs = [c for c in shown[dataset] if c.cost]
            best = best_values(drows, [(c.key, c.scale) for c in metric_columns])
            out.append(f"### {DATASET_NAMES.get(dataset, dataset)} — {protocol}\n")
            out.append(_protocol_note(drows, metric_columns) + "\n")
            if costs:
                out.append(_cost_note(costs).replace("--", MISSING_COST) + "\n")
            headers = [c.header for c in metric_columns] + ["Epoch", "Seeds"] + [c.header for c in costs]
            out.append("| Method | " + " | ".join(headers) + " | Selected on |")
            out.append("|---" * (len(headers) + 2) + "|")
            for row in drows:
                cells = [
                    column_cell(row, c, latex=False, best=best) + _p_text(row, c.key) for c in metric_columns
                ]
                cells += [cell(row, "epoch", 1, latex=False), str(row["n_seeds"])]
                cells += [column_cell(row, c, latex=False) for c in costs]
                marks = "".join({DAGGER: "†", DDAGGER: "‡"}[m] for m in _marks(row))
                method = row["method"].replace("|", "\\|") + (f" {marks}" if marks else "")
                out.append(f"| {method} | " + " | ".join(cells) + f" | {row['selection_split']} |")
            dropped = [r for r in drows if r["dropped_duplicates"]]
            if dropped:
                out.append("")
                out.append("‡ duplicate seeds, the most recent run kept; dropped: " + "; ".join(
                    f"{r['method']}: {r['dropped_duplicates']}" for r in dropped))  # fmt: skip
            out.append("")
    return "\n".join(out) + "\n"


def _protocol_note(rows: list[dict[str, Any]], columns: list[Column] | None = None) -> str:
    """The line above a Markdown table: the protocol, the interval, the bold rule, the p-values."""
    stats = f"{_spread_words(rows, latex=False)} over seeds; ×100. {_bold_words(rows, columns, latex=False)}"
    if any(_is_number(r.get(f"{c.key}|p")) for r in rows for c in columns or []):
        stats += " (p=…): the p-value against the column's best."
    if rows and rows[0]["protocol"] == MAX_OVER_EPOCHS:
        return ("per seed: maximum over epochs of each test metric separately (the study's protocol, "
                f"optimistic); {stats}")  # fmt: skip
    return f"metrics at each run's selected epoch; † = epoch selected on the test split; {stats}"


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


def write_csv(rows: list[dict[str, Any]], path: Path, cost: bool = False) -> None:
    """``results.csv``: every field of every row (the per-seed values and runs of the ``_`` fields
    aside); the run cost (``compute/*``) only with ``cost``, then every :data:`COST_COLUMNS`
    quantity, "–" where a group's runs did not record it."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not c.startswith("_")
                    and (cost or not c.startswith("compute/"))]  # fmt: skip
    if cost:
        columns += [f"compute/{k}|{s}" for _, k, *_ in COST_COLUMNS for s in ("mean", "std", "n")
                    if f"compute/{k}|{s}" not in columns]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            missing = {c: MISSING_COST for c in columns if c.startswith("compute/") and c not in row}
            writer.writerow({**row, **missing})


# ---- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodStyle:
    """How a method is drawn in every figure: its family's colour and hatch, its own marker, filled
    for a baseline, hollow for a ρ-regularised (R-) variant."""

    family: str
    colour: str
    marker: str
    hatch: str
    filled: bool


def colour(name: str) -> str:
    """The colour of a method family (:data:`FAMILY_COLOURS`), or of the family of a loss, a group
    or a method name (``margin``, ``CUB_MS``, ``R-Margin (D, β=1.2)``); grey when unknown."""
    if name in FAMILY_COLOURS:
        return FAMILY_COLOURS[name]
    core = name[2:] if name.startswith("R-") else name
    return FAMILY_COLOURS[method_family(core, core)]


def method_styles(rows: list[dict[str, Any]]) -> dict[str, MethodStyle]:
    """``{method: MethodStyle}``: the colour and hatch follow the family, fixed for every call;
    markers go to the methods in name order (a method and its R- variant share one)."""
    bases = sorted({_base(r) for r in rows})
    marker = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(bases)}
    styles = {}
    for r in rows:
        family = r.get("family") or method_family(r.get("loss"), r.get("group", ""))
        family = family if family in FAMILY_COLOURS else "other"
        styles[r["method"]] = MethodStyle(family, FAMILY_COLOURS[family], marker[_base(r)], FAMILY_HATCHES[family],
                                          not r["regularised"])  # fmt: skip
    return styles


def _base(row: dict[str, Any]) -> str:
    method = row["method"]
    return method[2:] if row["regularised"] and method.startswith("R-") else method


def interval(row: dict[str, Any], key: str, scale: float = 100) -> tuple[float, float]:
    """The error bar of ``key`` as (below, above) the mean, × ``scale``: the interval the tables
    report, mean ± sample std over seeds (0 with one seed), or ``|ci_low``/``|ci_high`` where a row
    has a confidence interval."""
    mean = row[f"{key}|mean"]
    low, high = row.get(f"{key}|ci_low"), row.get(f"{key}|ci_high")
    if _is_number(low) and _is_number(high):
        return (mean - low) * scale, (high - mean) * scale
    std = row.get(f"{key}|std")
    return (std * scale, std * scale) if _is_number(std) else (0.0, 0.0)


def _interval_words(rows: list[dict[str, Any]], key: str) -> str:
    if any(_is_number(r.get(f"{key}|ci_low")) for r in rows):
        return "error bars: the confidence interval of the tables"
    return "error bars: ± 1 sample std over seeds (none for one seed)"


_R1 = "testing/e_recall@1"
_R1_AXIS = "R@1 (%), test split"
_RHO = "evaluation/rho_spectrum@2"
# axis labels of the embedding-space statistics: what they are, their unit, and that they are
# measured on the training classes
_RELATION_AXIS = {
    "dists@intra": "π_intra: mean intra-class distance\n(cosine distance, training classes)",
    "dists@inter": "π_inter: mean distance between class centres\n(cosine distance, training classes)",
    "dists@intra_over_inter": "π_ratio = π_intra / π_inter\n(ratio, training classes)",
    "rho_spectrum@2": "ρ(Φ): spectral decay KL(u ‖ ŝ)\n(nats, training classes)",
}  # fmt: skip


def _pyplot() -> Any:
    import matplotlib  # lazy, and the Agg backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _point(ax: Any, row: dict[str, Any], x_key: str, x_scale: float, style: MethodStyle) -> None:
    """One method: its marker at (x, R@1) with both error bars; the data line's gid is the method."""
    x, y = row[f"{x_key}|mean"] * x_scale, row[f"{_R1}|mean"] * 100
    xerr, yerr = interval(row, x_key, x_scale), interval(row, _R1)
    container = ax.errorbar(
        [x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt=style.marker, ms=7,
        color=style.colour, mfc=style.colour if style.filled else "white",
        mec="black" if style.filled else style.colour, mew=0.6 if style.filled else 1.6,
        ecolor=style.colour, elinewidth=0.9, capsize=2, zorder=3, label=row["method"],
    )  # fmt: skip
    container.lines[0].set_gid(row["method"])


def _legend_handles(
    rows: list[dict[str, Any]], styles: dict[str, MethodStyle], methods: bool = True
) -> list[Any]:
    """Legend entries: each method (marker, colour, fill), each family present (colour and hatch)
    and, where there are R- variants, what filled and hollow mean."""
    import matplotlib  # already imported with pyplot: the artists live in its submodules

    line, patch = matplotlib.lines.Line2D, matplotlib.patches.Patch
    handles = []
    if methods:
        for method in dict.fromkeys(r["method"] for r in rows):
            st = styles[method]
            handles.append(line([], [], ls="", marker=st.marker, ms=7, color=st.colour, label=method,
                                mfc=st.colour if st.filled else "white", mec="black" if st.filled else st.colour,
                                mew=0.6 if st.filled else 1.6))  # fmt: skip
    for family in FAMILY_COLOURS:
        if any(styles[r["method"]].family == family for r in rows):
            handles.append(patch(facecolor=FAMILY_COLOURS[family], edgecolor="black", hatch=FAMILY_HATCHES[family],
                                 label=f"{family} loss" if family != "other" else "other / unknown loss"))  # fmt: skip
    if any(r["regularised"] for r in rows) and any(not r["regularised"] for r in rows):
        handles.append(patch(facecolor="0.35", edgecolor="black", label="filled: baseline"))
        handles.append(patch(facecolor="white", edgecolor="0.35", lw=1.6, label="hollow: ρ-regularised (R-)"))
    return handles


def relative_luminance(rgb: Any) -> float:
    """WCAG relative luminance of an sRGB colour (components in 0 … 1)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in list(rgb)[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _text_colour(background: Any) -> str:
    """Black or white, whichever contrasts more with ``background`` (WCAG contrast ratio)."""
    lum = relative_luminance(background)
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def correlation_figure(rows: list[dict[str, Any]]) -> Any:
    """Pearson correlations between the test metrics across the baseline methods of each dataset
    (their means over seeds): a diverging map centred at 0 (−1 … 1) with a colour bar, human metric
    names, each value printed in black or white by the cell's lightness."""
    plt = _pyplot()
    import matplotlib

    rows = [r for r in rows if r["protocol"] == SELECTED]
    datasets = sorted({r["dataset"] for r in rows}, key=_dataset_rank)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    norm = matplotlib.colors.Normalize(vmin=-1, vmax=1)
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.4 * max(1, len(datasets)) + 1.4, 4.6),
                             squeeze=False, layout="constrained")  # fmt: skip
    images = []
    for ax, dataset in zip(axes[0], datasets, strict=False):
        basic = [r for r in rows if r["dataset"] == dataset and not r["regularised"]]
        metrics = [f"e_recall@{k}" for k in recall_ranks(basic)] + CORRELATION_METRICS
        names = [m for m in metrics if all(f"testing/{m}|mean" in r for r in basic)]
        ax.set_title(f"{DATASET_NAMES.get(dataset, dataset)} ({len(basic)} baseline methods)")
        if len(basic) < 3 or len(names) < 2:
            ax.text(0.5, 0.5, "needs ≥ 3 methods with\n≥ 2 common test metrics", ha="center", va="center")
            ax.set_axis_off()
            continue
        values = np.array([[r[f"testing/{m}|mean"] for m in names] for r in basic])
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(values.T)
        images.append(ax.imshow(np.ma.masked_invalid(corr), cmap=cmap, norm=norm))
        labels = [metric_label(m) for m in names]
        ax.set_xticks(range(len(names)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), labels)
        ax.set_xlabel("test metric")
        ax.set_ylabel("test metric")
        for i in range(len(names)):
            for j in range(len(names)):
                value = corr[i, j]
                if not np.isfinite(value):  # a metric equal for every method: no correlation
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="black")
                    continue
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color=_text_colour(cmap(norm(value))))  # fmt: skip
    for ax in axes[0][len(datasets) :]:
        ax.set_axis_off()
    mappable = images[0] if images else matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=axes[0].tolist(), label="Pearson r (−1 … 1)", shrink=0.85)
    fig.suptitle("Correlation of the test metrics across methods (means over seeds, selected epoch)")
    return fig


def relation_figure(rows: list[dict[str, Any]], styles: dict[str, MethodStyle] | None = None) -> Any:
    """Test R@1 against π_intra, π_inter, π_ratio and ρ(Φ) of the training classes, per dataset
    (rows) and statistic (columns): one marker per baseline method with both error bars, the
    least-squares line, Pearson r in each panel's title, one legend below."""
    plt = _pyplot()
    rows = [r for r in rows if r["protocol"] == SELECTED]
    styles = styles or method_styles(rows)
    datasets = sorted({r["dataset"] for r in rows}, key=_dataset_rank)
    fig, axes = plt.subplots(max(1, len(datasets)), len(RELATION_METRICS),
                             figsize=(4.2 * len(RELATION_METRICS), 3.6 * max(1, len(datasets)) + 1.6),
                             squeeze=False, layout="constrained")  # fmt: skip
    shown: list[dict[str, Any]] = []
    fit = False
    for i, dataset in enumerate(datasets):
        basic = [r for r in rows if r["dataset"] == dataset and not r["regularised"]]
        for j, (label, metric) in enumerate(RELATION_METRICS):
            ax = axes[i, j]
            key = f"evaluation/{metric}"
            pts = [r for r in basic if f"{key}|mean" in r and f"{_R1}|mean" in r]
            shown += [r for r in pts if r not in shown]
            for r in pts:
                _point(ax, r, key, 1, styles[r["method"]])
            x = np.array([r[f"{key}|mean"] for r in pts])
            y = np.array([r[f"{_R1}|mean"] * 100 for r in pts])
            name = DATASET_NAMES.get(dataset, dataset)
            if len(pts) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                slope, intercept = np.polyfit(x, y, 1)
                grid = np.linspace(x.min(), x.max(), 10)
                ax.plot(grid, slope * grid + intercept, color="black", ls="--", lw=1, zorder=2)
                fit = True
                r = f"{np.corrcoef(x, y)[0, 1]:.2f}".replace("-", "−")
                ax.set_title(f"{name}: R@1 vs {label}\nPearson r = {r} ({len(pts)} methods)")
            else:
                ax.set_title(f"{name}: R@1 vs {label}\nr: needs ≥ 3 methods ({len(pts)})")
            ax.set_xlabel(_RELATION_AXIS[metric])
            ax.set_ylabel(_R1_AXIS)
            ax.grid(True, color="0.9", lw=0.6)
    handles = _legend_handles(shown, styles)
    if fit:
        import matplotlib

        handles.append(
            matplotlib.lines.Line2D([], [], color="black", ls="--", lw=1, label="least-squares fit")
        )
    if handles:
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False
        )
    fig.suptitle("Test R@1 against embedding-space statistics of the training classes "
                 f"(baselines; means over seeds; {_interval_words(shown, _R1)})")  # fmt: skip
    return fig


def rho_figure(rows: list[dict[str, Any]], dataset: str, styles: dict[str, MethodStyle] | None = None) -> Any:
    """R@1 against ρ(Φ) on ``dataset``: every method, baselines filled and their ρ-regularised R-
    variants hollow, an arrow from a baseline to its variant, names at the markers."""
    plt = _pyplot()
    rows = [r for r in rows if r["protocol"] == SELECTED]
    styles = styles or method_styles(rows)
    pts = [r for r in rows if r["dataset"] == dataset and f"{_RHO}|mean" in r and f"{_R1}|mean" in r]
    fig, ax = plt.subplots(figsize=(9.5, 6), layout="constrained")
    for r in pts:
        _point(ax, r, _RHO, 1, styles[r["method"]])
    baseline = {_base(r): r for r in pts if not r["regularised"]}
    for r in pts:
        if r["regularised"] and _base(r) in baseline:
            b = baseline[_base(r)]
            ax.annotate("", xy=(r[f"{_RHO}|mean"], r[f"{_R1}|mean"] * 100),
                        xytext=(b[f"{_RHO}|mean"], b[f"{_R1}|mean"] * 100),
                        arrowprops={"arrowstyle": "->", "color": "0.45", "lw": 0.9, "shrinkA": 6, "shrinkB": 6})  # fmt: skip
    what = "R@1 against ρ(Φ), baselines and ρ-regularised variants (arrow: baseline → R-)"
    _finish_r1_scatter(
        fig, ax, pts, styles, dataset, _RHO, 1, _RELATION_AXIS["rho_spectrum@2"].replace("\n", " "), what
    )
    return fig


def _finish_r1_scatter(
    fig: Any,
    ax: Any,
    pts: list[dict[str, Any]],
    styles: dict[str, MethodStyle],
    dataset: str,
    x_key: str,
    x_scale: float,
    x_label: str,
    what: str,
) -> None:
    """The common part of the per-dataset R@1 scatter figures: axes, grid, title (with the
    interval the error bars show), the method/family legend and a name at each point."""
    ax.set_xlabel(x_label)
    ax.set_ylabel(_R1_AXIS)
    ax.grid(True, color="0.9", lw=0.6)
    ax.set_title(f"{DATASET_NAMES.get(dataset, dataset)}: {what}\nmeans over seeds; {_interval_words(pts, _R1)}",
                 fontsize=9)  # fmt: skip
    handles = _legend_handles(pts, styles)
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    _label_points(ax, [(r[f"{x_key}|mean"] * x_scale, r[f"{_R1}|mean"] * 100, r["method"]) for r in pts])


_ERC = "testing/erc_recall@1"


def uncertainty_figure(
    rows: list[dict[str, Any]], dataset: str, styles: dict[str, MethodStyle] | None = None
) -> Any:
    """R@1 against ERC-R@1 (the area under the error-versus-reject curve of R@1, rejecting the
    least confident queries first) on ``dataset``: retrieval and the worth of the confidence in
    one picture; lower-left to upper-left is better. None when no run recorded ``erc_recall@1``."""
    rows = [r for r in rows if r["protocol"] == SELECTED]
    pts = [r for r in rows if r["dataset"] == dataset and f"{_ERC}|mean" in r and f"{_R1}|mean" in r]
    if not pts:
        return None
    styles = styles or method_styles(rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 6), layout="constrained")
    for r in pts:
        _point(ax, r, _ERC, 100, styles[r["method"]])
    what = "R@1 against ERC-R@1 (confidence: predicted κ or σ²; for point embeddings their norm)"
    x_label = "ERC-R@1 (%): area under the error-versus-reject curve of R@1, test split (lower is better)"
    _finish_r1_scatter(fig, ax, pts, styles, dataset, _ERC, 100, x_label, what)
    return fig


def _label_points(ax: Any, points: list[tuple[float, float, str]], fontsize: float = 7) -> None:
    """Name each point where the name covers no marker and no other name: the first free place of
    16 directions at growing distances (the least covered one when none is free), with a dotted
    leader line when it is not next to its point."""
    import matplotlib

    fig = ax.figure
    fig.canvas.draw()  # the final layout: names are placed in display coordinates
    renderer = fig.canvas.get_renderer()
    radius = 6 * fig.dpi / 72  # a marker's half size, in pixels
    centres = ax.transData.transform([(x, y) for x, y, _ in points]) if points else []
    taken = [
        matplotlib.transforms.Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
        for x, y in centres
    ]
    inside = ax.bbox.padded(-2)
    angles = np.deg2rad(
        [0, -22.5, 22.5, 180, 157.5, -157.5, 45, -45, 135, -135, 90, -90, 67.5, -67.5, 112.5, -112.5]
    )
    candidates = [
        (d * math.cos(a), d * math.sin(a)) for d in (4, 9, 15, 22, 30, 40, 52, 66, 82) for a in angles
    ]

    def covered(extent: Any) -> float:
        area = sum(max(0.0, min(extent.x1, t.x1) - max(extent.x0, t.x0)) * max(0.0, min(extent.y1, t.y1) - max(extent.y0, t.y0))
                   for t in taken)  # fmt: skip
        outside = not (inside.x0 <= extent.x0 and extent.x1 <= inside.x1 and inside.y0 <= extent.y0
                       and extent.y1 <= inside.y1)  # fmt: skip
        return area + (1e9 if outside else 0.0)

    for x, y, text in points:
        best: tuple[float, tuple[float, float]] | None = None
        for dx, dy in candidates:
            label = _annotate(ax, x, y, text, dx, dy, fontsize)
            score = covered(label.get_window_extent(renderer))
            label.remove()
            if best is None or score < best[0]:
                best = (score, (dx, dy))
            if score == 0:
                break
        if best is not None:
            label = _annotate(ax, x, y, text, *best[1], fontsize)
            taken.append(label.get_window_extent(renderer))


def _annotate(ax: Any, x: float, y: float, text: str, dx: float, dy: float, fontsize: float) -> Any:
    far = math.hypot(dx, dy) > 12
    label = ax.annotate(
        text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, zorder=4,
        bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
        ha="left" if dx > 1 else "right" if dx < -1 else "center",
        va="bottom" if dy > 1 else "top" if dy < -1 else "center", annotation_clip=False,
        arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "ls": ":", "shrinkA": 1, "shrinkB": 5} if far else None,
    )  # fmt: skip
    label.set_in_layout(False)
    return label


def bar_figure(rows: list[dict[str, Any]], dataset: str, styles: dict[str, MethodStyle] | None = None) -> Any:
    """Test R@1 of every method on ``dataset``, sorted, as horizontal bars from 0: the family's
    colour and hatch, hollow for the R- variants, error bars of the tables' interval, the value
    printed at each bar."""
    plt = _pyplot()
    rows = [r for r in rows if r["protocol"] == SELECTED]
    styles = styles or method_styles(rows)
    bars = sorted((r for r in rows if r["dataset"] == dataset and f"{_R1}|mean" in r),
                  key=lambda r: (r[f"{_R1}|mean"], r["method"]))  # fmt: skip
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(bars) + 2.2), layout="constrained")
    for i, r in enumerate(bars):
        st = styles[r["method"]]
        mean = r[f"{_R1}|mean"] * 100
        below, above = interval(r, _R1)
        container = ax.barh(
            i, mean, xerr=[[below], [above]] if below or above else None, height=0.7, hatch=st.hatch,
            color=st.colour if st.filled else "white", edgecolor="black" if st.filled else st.colour,
            linewidth=0.6 if st.filled else 1.6, capsize=3, error_kw={"ecolor": "black", "elinewidth": 1},
        )  # fmt: skip
        container.patches[0].set_gid(r["method"])
    ax.set_yticks(range(len(bars)), [r["method"] for r in bars])
    values = ax.secondary_yaxis("right")  # the numbers, in a column right of the plot
    values.set_yticks(range(len(bars)), [_mean_std(r, _R1) for r in bars])
    values.tick_params(length=0, labelsize=8)
    ends = [r[f"{_R1}|mean"] * 100 + interval(r, _R1)[1] for r in bars]
    ax.set_xlim(0, min(100.0, 10 * math.ceil(max(ends, default=90) / 10 + 0.05)))  # from 0, never cut
    ax.set_xlabel("R@1 (%), test split, selected epoch")
    ax.set_ylabel("method (sorted by R@1)")
    ax.grid(True, axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_title(f"{DATASET_NAMES.get(dataset, dataset)}: test R@1 per method\nmeans over seeds; "
                 f"{_interval_words(bars, _R1)}", fontsize=9)  # fmt: skip
    handles = _legend_handles(bars, styles, methods=False)
    if handles:
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False
        )
    return fig


def _mean_std(row: dict[str, Any], key: str, scale: float = 100) -> str:
    spread = _half_width(row, key)  # what the tables show after the ±
    mean = row[f"{key}|mean"] * scale
    return f"{mean:.1f} ± {spread * scale:.1f}" if spread is not None else f"{mean:.1f} (n=1)"


def build_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{file stem: matplotlib Figure}`` of the study's figures from the ``selected`` rows, all
    with one :func:`method_styles` (a method looks the same in every figure)."""
    selected = [r for r in rows if r["protocol"] == SELECTED]
    datasets = sorted({r["dataset"] for r in selected}, key=_dataset_rank)
    styles = method_styles(selected)
    plt = _pyplot()
    with plt.rc_context({"font.size": 9, "axes.titlesize": 9, "hatch.linewidth": 0.8}):
        figures = {"metric_correlation_matrix": correlation_figure(selected),
                   "comp_metric_relation": relation_figure(selected, styles)}  # fmt: skip
        for dataset in datasets:
            figures[f"Detailed_Rel_Recall_Rho_{_file_tag(dataset)}"] = rho_figure(selected, dataset, styles)
            uncertainty = uncertainty_figure(selected, dataset, styles)
            if uncertainty is not None:
                figures[f"Uncertainty_Recall_ERC_{_file_tag(dataset)}"] = uncertainty
        if datasets:
            figures["FirstPage"] = bar_figure(selected, datasets[0], styles)
    return figures


def _file_tag(dataset: str) -> str:
    """CUB200-2011 -> CUB200, In-Shop -> InShop: a file-name part."""
    return re.sub(r"[^A-Za-z0-9]", "", re.sub(r"-\d{4}$", "", DATASET_NAMES.get(dataset, dataset)))


def make_figures(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The study's figures (:func:`build_figures`) as PNG and PDF in ``out``; returns the files."""
    plt = _pyplot()
    written: list[Path] = []
    for name, fig in build_figures(rows).items():
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            fig.savefig(
                path, bbox_inches="tight", dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None
            )
            written.append(path)
        plt.close(fig)
    return written


# ---- command line ------------------------------------------------------------------------------


def run(
    runs: list[Run],
    out: Path,
    figures: bool = True,
    allow_mixed: bool = False,
    columns: list[str] | None = None,
    cost: bool = False,
    ci: str = "t",
    alpha: float = 0.05,
    bootstrap: int = 10000,
    test: str = "auto",
    query_bootstrap: int = 0,
    bootstrap_seed: int = 0,
) -> list[dict[str, Any]]:
    """Aggregate ``runs`` under both protocols and write every table (and figure) to ``out``.

    ``ci``, ``alpha``, ``bootstrap``, ``test``, ``bootstrap_seed``: the intervals and tests of
    :func:`add_statistics`; ``query_bootstrap``: resamples of :func:`add_query_intervals` (0: none).

    ``columns`` (``--columns``): the metric columns of every table instead of each dataset's
    Recall@k, F1, MAP@R, NMI (and the blocks of the shared table instead of R@1, NMI); ``cost``
    (``--cost``): the run cost columns. Raises :class:`MixedRunsError` (before writing anything)
    for a group of differing setups, or a dataset whose runs' cards differ (:func:`check_cards`),
    unless ``allow_mixed`` (then such tables are marked: caption, column ``mixed_cards``)."""
    rows = aggregate(runs, SELECTED, allow_mixed) + aggregate(runs, MAX_OVER_EPOCHS, allow_mixed, warn=False)
    mixed = check_cards(runs, allow_mixed)
    for row in rows:
        row["mixed_cards"] = ", ".join(mixed.get(row["dataset"], []))
    uncarded = sorted({r.group for r in runs if r.card is None}, key=_natural)
    if uncarded:
        print(f"note: {sum(r.card is None for r in runs)} runs have no run card (older runs; not checked for "
              f"comparability; 'no run card' in results.csv and the .tex comments): groups {_names(uncarded)}",
              file=sys.stderr)  # fmt: skip
    add_statistics(rows, ci, alpha, bootstrap, test, seed=bootstrap_seed)
    if query_bootstrap:
        add_query_intervals(rows, query_bootstrap, alpha, seed=bootstrap_seed)
    for column in [parse_column(c) for c in columns or []]:
        if not any(f"{column.key}|mean" in r for r in rows):
            print(f"warning: --columns {column.header}: no run recorded {column.key}; the column shows -",
                  file=sys.stderr)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv", cost=cost)
    (out / "results.md").write_text(markdown_tables(rows, columns, cost))
    selected = [r for r in rows if r["protocol"] == SELECTED]
    maxed = [r for r in rows if r["protocol"] == MAX_OVER_EPOCHS]
    for dataset in sorted({r["dataset"] for r in rows}, key=_dataset_rank):
        shown = table_columns(rows, dataset, columns, cost)  # the same columns under both protocols
        for name, protocol_rows in (
            (f"table_{dataset}", selected),
            (f"table_{dataset}_max_over_epochs", maxed),
        ):
            text = latex_single_table(protocol_rows, dataset, shown)
            if text:
                mine = [r for r in protocol_rows if r["dataset"] == dataset]
                (out / f"{name}.tex").write_text(_with_card_comments(text, mine))
        if cost:
            mine = [r for r in selected if r["dataset"] == dataset]
            (out / f"table_{dataset}_cost.tex").write_text(
                _with_card_comments(latex_cost_table(selected, dataset), mine)
            )
        uncertainty = latex_uncertainty_table(selected, dataset)
        if uncertainty:
            mine = [r for r in selected if r["dataset"] == dataset]
            (out / f"table_{dataset}_uncertainty.tex").write_text(_with_card_comments(uncertainty, mine))
    shared = latex_shared_table(selected, columns=columns)
    if shared:
        mine = [r for r in selected if r["dataset"] in SHARED_DATASETS]
        (out / "table_shared.tex").write_text(_with_card_comments(shared, mine))
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
        help="a group whose runs differ in a protocol flag (n_epochs, bs, arch, ...) or run card field is "
        "reported as one row per setting, and a table whose groups' run cards differ (bs, weights, class "
        "split, ...) is written marked as mixed (caption, results.csv column mixed_cards), instead of refused",
    )
    parser.add_argument(
        "--columns",
        nargs="+",
        metavar="COLUMN",
        help="the metric columns of every table, e.g. R@1 R@10 MAP@R NMI (human names or metric keys, "
        "optionally split/NAME; default: per dataset the test Recall@k its runs recorded, then F1, MAP@R, "
        "NMI; the shared table: R@1, NMI)",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="add the run cost (summary.json 'compute': train/eval images/s, wall time, peak GPU and host "
        "memory; mean over seeds, '–' where not recorded) to results.csv/.md and the per-dataset .tex",
    )
    stats = parser.add_argument_group("statistics (see evaluation/statistics.py)")
    stats.add_argument("--ci", default="t", choices=statistics.CI_METHODS,
                       help="interval over seeds shown after ± and in results.csv (|ci_low, |ci_high): Student-t, "
                       "percentile bootstrap of the seeds, or none (± sample std)")  # fmt: skip
    stats.add_argument("--alpha", type=float, default=0.05,
                       help="1 - confidence level of the intervals, and significance level of the tests")  # fmt: skip
    stats.add_argument(
        "--bootstrap", type=int, default=10000, metavar="B", help="resamples of --ci bootstrap"
    )
    stats.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resamples")
    stats.add_argument("--test", default="auto", choices=statistics.TESTS,
                       help="test of each method against the column's best (results.csv/.md: p-value; bold: the "
                       "best and those not significantly worse); auto: paired t where the seeds match, else "
                       "Welch")  # fmt: skip
    stats.add_argument("--query_bootstrap", type=int, default=0, metavar="B",
                       help="resample each run's test queries B times (from its embeddings_testing.npz of "
                       "main.py --save_embeddings) for a per-run interval of R@k and MAP@R (results.csv: "
                       "|qci_low, |qci_high; mean over the group's runs); 0: off")  # fmt: skip
    opt = parser.parse_args(argv)
    for name in opt.columns or []:
        try:
            parse_column(name)
        except ValueError as err:
            parser.error(f"--columns: {err}")
    try:
        statistics.check_options(ci=opt.ci, alpha=opt.alpha, n_resamples=opt.bootstrap, test=opt.test,
                                 query_resamples=opt.query_bootstrap)  # fmt: skip
    except ConfigError as err:
        parser.error(str(err))
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
        rows = run(runs, Path(opt.out), figures=not opt.no_figures, allow_mixed=opt.allow_mixed,
                   columns=opt.columns, cost=opt.cost, ci=opt.ci, alpha=opt.alpha, bootstrap=opt.bootstrap,
                   test=opt.test, query_bootstrap=opt.query_bootstrap, bootstrap_seed=opt.bootstrap_seed)  # fmt: skip
    except MixedRunsError as err:
        parser.exit(2, f"Result_Evaluations.py: error: {err}\n")
    print(markdown_tables(rows, opt.columns, opt.cost))
    print(f"{len(runs)} runs, {len(rows) // 2} groups -> {opt.out}")
    return rows


if __name__ == "__main__":
    main()
