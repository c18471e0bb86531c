"""Result_Evaluations.py on a digits-only and on a mixed (CUB200/CARS196/SOP + digits) result folder:
every ``.tex`` passes a strict structural check (and compiles where ``pdflatex`` is installed); a
seed that finished twice is counted once and flagged; runs of one group with differing protocol
flags are refused (or split with ``--allow_mixed``), never pooled; ``--groups``/``--exclude``/
``--datasets`` filter."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import Result_Evaluations as RE

QUICKSTART = "digits_margin_smallcnn_normalize_2026-11-30-10-00-00"
ODD_GROUP = "DIG_a&b%c#d$e{f}g~h^i\\j<k>|l_m"  # every LaTeX special character in a method name
PROTOCOL = {"n_epochs": 15, "bs": 100, "arch": "smallcnn_normalize", "embed_dim": 128, "use_tv_split": True,
            "tv_split_by_samples": True, "tv_split_perc": 0.8, "loss": "margin", "batch_mining": "distance",
            "lr": 1e-3, "samples_per_class": 4, "augmentation": "base"}  # fmt: skip
_MTIME = [1_000_000_000]


def make_run(root: Path, dataset: str, name: str, seed: int, group: str, r1: float, **flags) -> Path:
    """A finished run folder as main.py leaves it: args.json (with the protocol flags), metrics.csv
    over 3 epochs (R@1 peaking at epoch 1 = ``r1``), summary.json at epoch 1; later calls finish later.
    ``recall_at``: the Recall@k ranks recorded (default 1, 2); ``compute``: summary.json's cost dict;
    ``card``: the run card of args.json and summary.json (default: none, an older run);
    ``test_metrics``: more test-split metrics (every epoch)."""
    selection = flags.pop("selection_split", "validation" if flags.get("use_tv_split", True) else "testing")
    recall_at, compute = flags.pop("recall_at", (1, 2)), flags.pop("compute", None)
    card = flags.pop("card", None)
    test_metrics = flags.pop("test_metrics", {})  # further test-split metrics, the same every epoch
    args = {"dataset": dataset, "seed": seed, "group": group, "log_online": True, **PROTOCOL, **flags}
    folder = root / dataset / name
    folder.mkdir(parents=True)
    info = {"args": args, "git_commit": "x", "versions": {}} | ({"run_card": card} if card else {})
    (folder / "args.json").write_text(json.dumps(info))
    curve = [r1 - 0.1, r1, r1 - 0.05]
    rows = []
    for epoch in range(3):
        rows.append({"epoch": epoch, "split": "training", "loss": 1.0 / (epoch + 1)})
        test = {f"e_recall@{k}": min(1.0, curve[epoch] + 0.1 * i) for i, k in enumerate(recall_at)}
        test |= {"f1": curve[epoch] / 2, "mAP@R": curve[epoch] / 3, "nmi": 0.5 + seed / 100, **test_metrics}
        rows.append({"epoch": epoch, "split": "testing", **test})
        rows.append({"epoch": epoch, "split": "validation", "e_recall@1": curve[epoch]})
        rows.append({"epoch": epoch, "split": "evaluation", "dists@intra": 0.3, "rho_spectrum@2": 0.1 + r1})
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    metrics: dict[str, dict] = {}
    for row in rows:
        if row["epoch"] == 1 and row["split"] != "training":
            metrics[row["split"]] = {k: v for k, v in row.items() if k not in ("epoch", "split")}
    summary = {"selected_epoch": 1, "selection_split": selection, "metrics": metrics}
    if compute is not None:
        summary["compute"] = compute
    if card:
        summary["run_card"] = card
    (folder / "summary.json").write_text(json.dumps(summary))
    _MTIME[0] += 60
    os.utime(folder / "summary.json", (_MTIME[0], _MTIME[0]))
    return folder


def digits_runs(root: Path) -> None:
    """The digits sweep (2 seeds, test-split selection as Revisit_Runs.sh does), a ρ-regularised
    method with one seed, a seed rerun (``DIG_MS_s1_1``), the Quickstart run and an odd group name."""
    for seed in (0, 1):
        make_run(root, "digits", f"DIG_Margin_b12_Distance_s{seed}", seed, "DIG_Margin_b12_Distance",
                 0.6 + seed / 10, use_tv_split=False)  # fmt: skip
        make_run(root, "digits", f"DIG_MS_s{seed}", seed, "DIG_MS", 0.5 + seed / 10, use_tv_split=False)
    make_run(root, "digits", "DIGreg_Margin_b12_Distance_s0", 0, "DIGreg_Margin_b12_Distance", 0.72,
             use_tv_split=False)  # fmt: skip
    make_run(root, "digits", "DIG_MS_s1_1", 1, "DIG_MS", 0.9, use_tv_split=False)  # the rerun: newest
    make_run(root, "digits", QUICKSTART, 0, "Sample_Group", 0.8, log_online=False)
    make_run(root, "digits", f"{ODD_GROUP}_s0", 0, ODD_GROUP, 0.3, use_tv_split=False)


def mixed_runs(root: Path) -> None:
    digits_runs(root)
    for dataset, prefix, epochs in (
        ("cub200", "CUB", 150),
        ("cars196", "CAR", 150),
        ("online_products", "SOP", 100),
    ):
        for seed in (0, 1, 2):
            for group, r1 in ((f"{prefix}_Margin_b12_Distance", 0.6), (f"{prefix}reg_Margin_b12_Distance_3", 0.63),
                              (f"{prefix}_MS", 0.61)):  # fmt: skip
                make_run(root, dataset, f"{group}_s{seed}", seed, group, r1 + seed / 100, n_epochs=epochs)
    make_run(root, "cub200", "CUB_Triplet_Semihard_s0", 0, "CUB_Triplet_Semihard", 0.5, use_tv_split=False)


# ---- the structural check -----------------------------------------------------------------------

ALLOWED_COMMANDS = {
    "\\begin", "\\end", "\\centering", "\\small", "\\caption", "\\label", "\\toprule", "\\midrule",
    "\\bottomrule", "\\cmidrule", "\\multicolumn", "\\textbf", "\\mathbf", "\\pm", "\\times", "\\dagger", "\\footnotesize", "\\alpha",
    "\\ddagger", "\\setlength", "\\tabcolsep", "\\beta", "\\rho", "\\pi", "\\Phi", "\\textbackslash", "\\textasciitilde",
    "\\textasciicircum", "\\textless", "\\textgreater", "\\textbar",
}  # fmt: skip
ESCAPES = {"\\_", "\\&", "\\%", "\\#", "\\$", "\\{", "\\}", "\\\\"}


def _tokens(text: str) -> list[str]:
    return re.findall(r"\\[A-Za-z]+|\\.|.", text, re.S)


def _column_count(spec: str) -> int:
    spec = re.sub(r"[@!]\{[^{}]*\}", "", spec)  # @{} / !{} take no column
    spec = re.sub(r"[pmb]\{[^{}]*\}", "c", spec)
    assert re.fullmatch(r"[lcr|]+", spec), f"unknown column spec {spec!r}"
    return sum(spec.count(c) for c in "lcr")


def _cells(row: str) -> list[str]:
    """Split at ``&`` outside braces (``\\&`` is text)."""
    cells, depth, current = [], 0, ""
    for tok in _tokens(row):
        depth += tok == "{"
        depth -= tok == "}"
        if tok == "&" and depth == 0:
            cells.append(current)
            current = ""
        else:
            current += tok
    return [*cells, current]


def latex_problems(text: str) -> list[str]:
    """Every reason ``text`` is not a compilable booktabs table float (empty: none)."""
    problems = []
    if not text.isascii():
        problems.append("non-ASCII characters (pdflatex without inputenc setup)")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        m = re.search(r"(?<!\\)%", line)
        if m and line[: m.start()].strip():
            problems.append(f"line {number}: unescaped % cuts the line")
        lines.append(line[: m.start()] if m else line)
    body = "\n".join(lines)
    stack: list[str] = []
    for m in re.finditer(r"\\(begin|end)\{([^{}]*)\}", body):
        if m.group(1) == "begin":
            stack.append(m.group(2))
        elif not stack or stack.pop() != m.group(2):
            problems.append(f"unbalanced \\end{{{m.group(2)}}}")
    problems += [f"\\begin{{{env}}} never ended" for env in stack]
    for number, line in enumerate(lines, 1):
        depth, math = 0, False
        for tok in _tokens(line):
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth < 0:
                    problems.append(f"line {number}: unbalanced }}")
            elif tok == "$":
                math = not math
            elif tok.startswith("\\") and tok[1:2].isalpha() and tok not in ALLOWED_COMMANDS:
                problems.append(f"line {number}: unknown command {tok}")
            elif tok.startswith("\\") and not tok[1:2].isalpha() and tok not in ESCAPES:
                problems.append(f"line {number}: unknown escape {tok}")
            elif tok in ("_", "^") and not math:
                problems.append(f"line {number}: unescaped {tok} outside math")
            elif tok in ("#", "~"):
                problems.append(f"line {number}: unescaped {tok}")
        if depth or math:
            problems.append(f"line {number}: unbalanced braces or $ in {line!r}")
    if not re.search(r"\\begin\{table\*?\}", body) or "\\caption{" not in body or "\\label{" not in body:
        problems.append("not a table float with \\caption and \\label")
    if "\\hline" in body:
        problems.append("\\hline in a booktabs table")
    tabulars = re.findall(r"\\begin\{tabular\}\{((?:[^{}]|\{[^{}]*\})*)\}\n(.*?)\\end\{tabular\}", body, re.S)
    if len(tabulars) != 1:
        return [*problems, f"{len(tabulars)} tabulars, expected 1"]
    spec, content = tabulars[0]
    columns = _column_count(spec)
    rows = [x.strip() for x in content.strip().splitlines() if x.strip()]
    if not rows or rows[0] != "\\toprule" or rows[-1] != "\\bottomrule" or "\\midrule" not in rows:
        problems.append("booktabs rules missing or misplaced (\\toprule first, \\midrule, \\bottomrule last)")
    body_rows = 0
    for row in rows:
        if re.fullmatch(r"(\\(toprule|midrule|bottomrule)|(\\cmidrule(\(\w+\))?\{\d+-\d+\})+)", row):
            continue
        if not row.endswith("\\\\"):
            problems.append(f"row does not end with \\\\: {row!r}")
            continue
        cells = _cells(row[:-2])
        width = sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)
        if width != columns:
            problems.append(f"{width} columns, the spec {spec!r} has {columns}: {row!r}")
        body_rows += 1
    if body_rows < 2:
        problems.append("a header and no data row")
    return problems


def compile_problems(tex_files: list[Path], workdir: Path) -> str:
    """pdflatex on one document that \\inputs every table; "" when it compiles cleanly."""
    workdir.mkdir()
    for path in tex_files:
        shutil.copy(path, workdir / path.name)
    inputs = "\n".join(f"\\input{{{p.stem}}}\n\\clearpage" for p in tex_files)
    (workdir / "doc.tex").write_text(
        f"\\documentclass{{article}}\n\\usepackage{{booktabs}}\n\\begin{{document}}\n{inputs}\n\\end{{document}}\n"
    )
    cmd = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=120)
    log = (workdir / "doc.log").read_text(errors="replace") if (workdir / "doc.log").exists() else ""
    if proc.returncode != 0 or not (workdir / "doc.pdf").exists():
        return proc.stdout[-3000:]
    missing = [x for x in log.splitlines() if "Missing character" in x or "Undefined control" in x]
    return "\n".join(missing)


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["digits", "mixed"])
def test_every_tex_output_is_a_valid_booktabs_table(kind, tmp_path, capsys):
    root = tmp_path / "runs"
    (digits_runs if kind == "digits" else mixed_runs)(root)
    out = tmp_path / "tables"
    out.mkdir()
    (out / "table_shared.tex").write_text("\\begin{tabular}{l}\nName & \\\\\n")  # an older, broken one
    RE.main(["--runs", str(root), "--out", str(out), "--no_figures"])
    tex = sorted(out.glob("*.tex"))
    datasets = ["digits"] if kind == "digits" else ["cub200", "cars196", "online_products", "digits"]
    expected = {f"table_{d}{p}.tex" for d in datasets for p in ("", "_max_over_epochs")}
    if kind == "mixed":
        expected.add("table_shared.tex")
    else:  # no CUB/CARS/SOP: no shared table (it used to be a one-column tabular with "&" rows)
        assert (
            "table_shared.tex not written: no CUB200, CARS196 or SOP runs (the older one"
            in capsys.readouterr().out
        )
    assert {p.name for p in tex} == expected
    for path in tex:
        text = path.read_text()
        assert latex_problems(text) == [], path.name
        assert text.startswith("% ") and "\\usepackage{booktabs}" in text.splitlines()[0]
        caption = re.search(r"\\caption\{(.*)\}\n", text).group(1)
        assert "$\\times 100$" in caption and "seed" in caption
        if "max_over_epochs" in path.name:
            assert "maximum over epochs" in caption
        else:
            assert "selected on the" in caption and "ddof${}=1$" in caption
    digits = (out / "table_digits.tex").read_text()
    # the sweep selected on the test split: said in the caption, † on every such method
    assert "\\textbf{TEST} split" in digits and "Multisimilarity$^{\\dagger\\ddagger}$ &" in digits
    odd = "a\\&b\\%c\\#d\\$e\\{f\\}g\\textasciitilde{}h\\textasciicircum{}i\\textbackslash{}j\\textless{}k"
    assert f"{odd}\\textgreater{{}}\\textbar{{}}l m$^\\dagger$ & " in digits
    if kind == "mixed":
        shared = (out / "table_shared.tex").read_text()
        assert "Digits" not in shared and "\\multicolumn{2}{c}{SOP}" in shared
        assert "over 1--3 seeds" in shared  # CUB_Triplet_Semihard has one seed
        cub = (out / "table_cub200.tex").read_text()
        assert "selected on the validation split or, where marked $^\\dagger$, on the \\textbf{TEST}" in cub
        assert "Triplet (S)$^\\dagger$ &" in cub


@pytest.mark.skipif(
    not shutil.which("pdflatex"), reason="pdflatex not installed (the structural check still runs)"
)
@pytest.mark.parametrize("kind", ["digits", "mixed"])
def test_every_tex_output_compiles(kind, tmp_path):
    root = tmp_path / "runs"
    (digits_runs if kind == "digits" else mixed_runs)(root)
    RE.main(["--runs", str(root), "--out", str(tmp_path / "tables"), "--no_figures"])
    tex = sorted((tmp_path / "tables").glob("*.tex"))
    assert len(tex) == (2 if kind == "digits" else 9)
    assert compile_problems(tex, tmp_path / "latex") == ""
    broken = tmp_path / "old_table_shared.tex"  # what the digits sweep used to write
    broken.write_text("\\begin{tabular}{l}\nName & \\\\\nDIG_MS & \\\\\n\\end{tabular}\n")
    assert compile_problems([broken], tmp_path / "latex_broken") != ""


def test_best_value_per_column_is_bold(tmp_path):
    root = tmp_path / "runs"
    mixed_runs(root)
    RE.main(["--runs", str(root), "--out", str(tmp_path / "t"), "--no_figures", "--datasets", "cub200"])
    cub = (tmp_path / "t" / "table_cub200.tex").read_text()
    row = next(x for x in cub.splitlines() if x.startswith("R-Margin"))  # R@1 0.64 ± 0.01: the best
    # ± the 95% t-interval's half-width: 1.00 × t(0.975, 2) / √3 = 2.48
    assert row.startswith("R-Margin (D, $\\beta$=1.2) & $\\mathbf{64.00}\\pm2.48$ & ")
    # R@1, R@2, F1, mAP@R: one best each; NMI: a three-way tie (51.00), all bold; Epoch never
    assert cub.count("\\mathbf") == 4 + 3 and cub.count("\\mathbf{51.00}") == 3
    assert "\\mathbf{50.00}" not in cub  # Triplet (S)'s lower NMI
    assert RE.higher_is_better("e_recall@1") and RE.higher_is_better("mAP@R") and RE.higher_is_better("nmi")
    assert not RE.higher_is_better("dists@intra") and not RE.higher_is_better("rho_spectrum@2")
    assert not RE.higher_is_better("dists@intra_over_inter") and not RE.higher_is_better("epoch")


def test_uncertainty_table_bolds_each_metric_in_its_own_direction(tmp_path):
    root = tmp_path / "runs"
    for seed in range(3):  # PFE: better ERC (lower) and EER (lower); HIB: better AUC
        pfe = {"erc_recall@1": 0.10 + seed / 1000, "roc_auc": 0.80 + seed / 1000, "eer": 0.20 + seed / 1000}
        hib = {"erc_recall@1": 0.30 + seed / 1000, "roc_auc": 0.90 + seed / 1000, "eer": 0.25 + seed / 1000}
        make_run(root, "digits", f"PFE_s{seed}", seed, "PFE", 0.8, loss="pfe", test_metrics=pfe)
        make_run(root, "digits", f"HIB_s{seed}", seed, "HIB", 0.7, loss="hib", test_metrics=hib)
    make_run(root, "cub200", "Margin_s0", 0, "Margin", 0.6)  # no uncertainty metrics: no table
    out = tmp_path / "t"
    rows = RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--ci", "none"])
    assert not (out / "table_cub200_uncertainty.tex").exists()
    assert RE.uncertainty_figure(rows, "cub200") is None
    fig = RE.uncertainty_figure(rows, "digits")  # one marker per method at (ERC-R@1, R@1) × 100
    points = {
        line.get_gid(): tuple(line.get_xydata()[0]) for ax in fig.axes for line in ax.lines if line.get_gid()
    }
    assert points == {"PFE": pytest.approx((10.1, 80.0)), "HIB": pytest.approx((30.1, 70.0))}
    table = (out / "table_digits_uncertainty.tex").read_text()
    assert latex_problems(table) == [] and "\\label{tab:digits-uncertainty}" in table
    assert "Method & R@1 & MAP@R & ERC-R@1 & AUC & EER & Seeds" in table
    cells = {
        line.split(" & ")[0]: line.split(" & ")[1:]
        for line in table.splitlines()
        if line.startswith(("PFE", "HIB"))
    }
    # columns: R@1, MAP@R, ERC-R@1, AUC, EER, Seeds
    assert cells["PFE"][2].startswith("$\\mathbf{10.10}") and cells["HIB"][2].startswith("$30.10")
    assert cells["HIB"][3].startswith("$\\mathbf{90.10}") and cells["PFE"][3].startswith("$80.10")
    assert cells["PFE"][4].startswith("$\\mathbf{20.10}") and cells["HIB"][4].startswith("$25.10")
    assert (
        RE.direction("erc_recall@1") == -1 and RE.direction("eer") == -1 and RE.direction("fnmr@1e-3") == -1
    )
    assert RE.direction("roc_auc") == 1 and RE.direction("tpr@1e-3") == 1 and RE.direction("dists@intra") == 0


def test_a_seed_that_finished_twice_counts_once_and_is_flagged(tmp_path, capsys):
    root = tmp_path / "runs"
    digits_runs(root)
    out = tmp_path / "tables"
    rows = RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--groups", "DIG_MS"])
    err = capsys.readouterr().err
    (row,) = [r for r in rows if r["protocol"] == RE.SELECTED]
    assert row["n_seeds"] == 2 and row["seeds"] == "0 1"  # not "0 1 1"
    assert row["dropped_duplicates"] == "DIG_MS_s1"  # the older run
    assert row["testing/e_recall@1|mean"] == pytest.approx((0.5 + 0.9) / 2)  # the rerun's value
    warnings = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1  # one line per group, not one per protocol
    assert "digits/DIG_MS: seed 1 finished more than once" in warnings[0]
    assert "kept the most recent run of each (DIG_MS_s1_1), dropped DIG_MS_s1" in warnings[0]
    with (out / "results.csv").open() as f:
        assert {r["dropped_duplicates"] for r in csv.DictReader(f)} == {"DIG_MS_s1"}
    assert "$^\\ddagger$: a seed had several finished runs" in (out / "table_digits.tex").read_text()
    assert "Multisimilarity † ‡ |" not in (out / "results.md").read_text()
    assert "Multisimilarity †‡ |" in (out / "results.md").read_text()
    assert "dropped: Multisimilarity: DIG_MS_s1" in (out / "results.md").read_text()


def test_the_most_recent_finished_run_wins_and_groupless_reruns_group_together(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "digits", "Sample_Group_s1", 1, "Sample_Group", 0.4)
    make_run(root, "digits", "Sample_Group_s1_1", 1, "Sample_Group", 0.5)
    os.utime(root / "digits" / "Sample_Group_s1" / "summary.json", (2e9, 2e9))  # finished last
    (row,) = RE.aggregate(RE.load_local_runs(root), RE.SELECTED, warn=False)
    assert row["group"] == "Sample_Group" and row["n_seeds"] == 1
    assert row["testing/e_recall@1|mean"] == pytest.approx(0.4)
    assert row["dropped_duplicates"] == "Sample_Group_s1_1"


def test_wandb_duplicates_keep_the_latest_timestamp():
    class Run:
        def __init__(self, name, r1, timestamp):
            self.name, self.config = name, {"dataset": "digits", "seed": 0, "group": "DIG_MS", "n_epochs": 2}
            self.summary = {"selected_epoch": 0, "metrics/testing/e_recall@1": r1, "_timestamp": timestamp}

        def scan_history(self):
            return iter([])

    class Api:
        def runs(self, project):
            return [Run("DIG_MS_s0_1", 0.7, 200.0), Run("DIG_MS_s0", 0.3, 100.0)]

    runs = RE.load_wandb_runs("me/p", api=Api())
    (row,) = RE.aggregate(runs, RE.SELECTED, warn=False)
    assert row["testing/e_recall@1|mean"] == pytest.approx(0.7) and row["dropped_duplicates"] == "DIG_MS_s0"
    assert (
        RE.load_wandb_runs("me/p", api=Api(), keep=lambda d, g, n: n.endswith("_1"))[0].name == "DIG_MS_s0_1"
    )


def test_runs_with_different_n_epochs_are_refused_or_split_never_pooled(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1):
        make_run(root, "digits", f"DIG_MS_s{seed}", seed, "DIG_MS", 0.5)
    make_run(root, "digits", "DIG_MS_s0_1", 0, "DIG_MS", 0.9, n_epochs=30)  # same seed, longer run
    out = tmp_path / "tables"
    with pytest.raises(SystemExit) as exc:
        RE.main(["--runs", str(root), "--out", str(out), "--no_figures"])
    assert exc.value.code == 2 and not out.exists()  # nothing written
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "digits/DIG_MS: its runs differ in --n_epochs" in line
    assert "n_epochs=15: DIG_MS_s0, DIG_MS_s1; n_epochs=30: DIG_MS_s0_1" in line and "--allow_mixed" in line

    rows = RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--allow_mixed"])
    selected = {r["setting"]: r for r in rows if r["protocol"] == RE.SELECTED}
    assert selected.keys() == {"n_epochs=15", "n_epochs=30"}
    assert selected["n_epochs=15"]["n_seeds"] == 2 and selected["n_epochs=30"]["n_seeds"] == 1
    assert selected["n_epochs=30"]["dropped_duplicates"] == ""  # seed 0 of another setting: no duplicate
    assert selected["n_epochs=30"]["method"] == "Multisimilarity [n_epochs=30]"
    text = (out / "table_digits.tex").read_text()
    assert latex_problems(text) == [] and "Multisimilarity [n\\_epochs=30]" in text


@pytest.mark.parametrize("flag, value", [("bs", 64), ("arch", "resnet50_frozen_normalize"), ("embed_dim", 64),
                                         ("use_tv_split", False)])  # fmt: skip
def test_every_protocol_flag_is_checked(tmp_path, flag, value):
    root = tmp_path / "runs"
    make_run(root, "digits", "DIG_MS_s0", 0, "DIG_MS", 0.5)
    make_run(root, "digits", "DIG_MS_s1", 1, "DIG_MS", 0.5, **{flag: value})
    with pytest.raises(RE.MixedRunsError, match=f"differ in --{flag}"):
        RE.aggregate(RE.load_local_runs(root))


def test_filters(tmp_path, capsys):
    root = tmp_path / "runs"
    mixed_runs(root)

    def groups(*flags: str) -> set[str]:
        rows = RE.main(["--runs", str(root), "--out", str(tmp_path / "t"), "--no_figures", *flags])
        return {r["group"] for r in rows}

    every = groups()
    assert QUICKSTART in every  # a run without --group is its own "method"
    assert groups("--groups", "DIG*") == {"DIG_Margin_b12_Distance", "DIG_MS", "DIGreg_Margin_b12_Distance",
                                          ODD_GROUP}  # fmt: skip
    assert groups("--exclude", "digits_*") == every - {QUICKSTART}  # by run name
    assert groups("--exclude", "Sample_Group") == every  # the group of a groupless run is its name
    assert groups("--datasets", "cars196", "online_products") == {
        f"{p}{s}"
        for p in ("CAR", "SOP")
        for s in ("_Margin_b12_Distance", "reg_Margin_b12_Distance_3", "_MS")
    }
    assert groups("--datasets", "cub200", "--groups", "*MS", "CUB_*", "--exclude", "*Semihard") == {
        "CUB_Margin_b12_Distance", "CUB_MS",
    }  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        groups("--groups", "NoSuch*")
    assert "passes --groups/--exclude/--datasets; groups: cub200/CUB_MS" in str(exc.value)


def test_latex_escape_and_the_checker_catches_broken_tables():
    assert RE.latex_escape("a_b&c%d#e$f{g}h~i^j\\k") == (
        "a\\_b\\&c\\%d\\#e\\$f\\{g\\}h\\textasciitilde{}i\\textasciicircum{}j\\textbackslash{}k"
    )
    assert RE.latex_escape("R-Margin (D, β=1.2) é ✓") == "R-Margin (D, $\\beta$=1.2) e ?"
    good = RE._latex_table("A caption.", "tab:x", 3, ["Method & A & B \\\\", "\\midrule"], [["m", "1", "2"]])
    assert latex_problems(good) == []
    with pytest.raises(ValueError, match="2 cells, not 3"):
        RE._latex_table("c", "tab:x", 3, ["Method & A & B \\\\", "\\midrule"], [["m", "1"]])
    # what the digits sweep used to write: a one-column tabular with "&" rows and \hline
    old = "% note\n\\begin{tabular}{l}\nName & \\\\\n\\hline\nDIG_MS & \\\\\n\\end{tabular}\n"
    problems = " | ".join(latex_problems(old))
    for expected in (
        "2 columns, the spec 'l' has 1",
        "unescaped _",
        "\\hline",
        "booktabs rules",
        "table float",
    ):
        assert expected in problems
    assert "never ended" in " ".join(latex_problems(good.replace("\\end{table*}", "")))
    assert "unescaped % cuts" in " ".join(latex_problems(good.replace("m &", "5% &")))


# ---- per-dataset Recall@k, --columns, --cost --------------------------------------------------------

RANKS = {"cub200": (1, 2, 4, 8), "online_products": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30, 40)}
COMPUTE = {"train_images_per_s": 412.4, "eval_images_per_s": 1903.0, "peak_host_mem_mb": 6144.0,
           "peak_gpu_mem_mb": 10240.0, "wall_time_s": 18000.0}  # fmt: skip


def ranked_runs(root: Path) -> None:
    """CUB200, SOP and In-Shop runs recording each dataset's own Recall@k ranks (as main.py's
    per-dataset defaults do); on SOP one group also recorded R@2 (not every run: not a column);
    the MS runs have a compute dict, the Margin runs (older) do not; the CPU run has no GPU memory."""
    for dataset, ranks in RANKS.items():
        prefix = {"cub200": "CUB", "online_products": "SOP", "inshop": "INSHOP"}[dataset]
        for seed in (0, 1):
            make_run(root, dataset, f"{prefix}_Margin_b12_Distance_s{seed}", seed, f"{prefix}_Margin_b12_Distance",
                     0.6 + seed / 100, recall_at=ranks + ((2,) if dataset == "online_products" else ()))  # fmt: skip
            make_run(root, dataset, f"{prefix}_MS_s{seed}", seed, f"{prefix}_MS", 0.62 + seed / 100,
                     recall_at=ranks, compute=dict(COMPUTE, train_images_per_s=400.0 + 20 * seed))  # fmt: skip
    make_run(root, "cub200", "CUB_Contrastive_s0", 0, "CUB_Contrastive", 0.5, recall_at=RANKS["cub200"],
             compute=dict(COMPUTE, peak_gpu_mem_mb=None))  # fmt: skip


def test_tables_follow_the_recall_ranks_each_dataset_recorded(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "tables"
    ranked_runs(root)
    RE.main(["--runs", str(root), "--out", str(out), "--no_figures"])
    headers = {
        "cub200": "Method & R@1 & R@2 & R@4 & R@8 & F1 & MAP@R & NMI & Epoch & Seeds \\\\",
        "online_products": "Method & R@1 & R@10 & R@100 & R@1000 & F1 & MAP@R & NMI & Epoch & Seeds \\\\",
        "inshop": "Method & R@1 & R@10 & R@20 & R@30 & R@40 & F1 & MAP@R & NMI & Epoch & Seeds \\\\",
    }
    for dataset, header in headers.items():
        for suffix in ("", "_max_over_epochs"):  # the same columns under both protocols
            text = (out / f"table_{dataset}{suffix}.tex").read_text()
            assert header in text.splitlines(), (dataset, suffix)
            assert latex_problems(text) == []
    sop = (out / "table_online_products.tex").read_text()
    assert "SOP: R@1, R@10, R@100, R@1000, F1, MAP@R and NMI on the test split" in sop
    # 11 columns: a smaller font and narrower gaps; the study's 8 (the shared table: 7) keep \\small
    assert "\\footnotesize\n\\setlength{\\tabcolsep}{3pt}" in sop
    assert "\\small\n\\setlength{\\tabcolsep}{4pt}" in (out / "table_shared.tex").read_text()
    # Multisimilarity has the best mean of every R@k
    assert (
        "Multisimilarity & $\\mathbf{62.50}\\pm6.35$ & $\\mathbf{72.50}\\pm6.35$ & $\\mathbf{82.50}\\pm6.35$ & $\\mathbf{92.50}\\pm6.35$"
        in sop
    )
    md = (out / "results.md").read_text()
    assert "| Method | R@1 | R@10 | R@100 | R@1000 | F1 | MAP@R | NMI | Epoch | Seeds | Selected on |" in md
    assert (
        "| Method | R@1 | R@10 | R@20 | R@30 | R@40 | F1 | MAP@R | NMI | Epoch | Seeds | Selected on |" in md
    )
    # the shared table: the study's R@1 and NMI per dataset (R@1: the rank every dataset reports)
    shared = (out / "table_shared.tex").read_text()
    assert "Method & R@1 & NMI & R@1 & NMI \\\\" in shared and latex_problems(shared) == []
    if shutil.which("pdflatex"):
        assert compile_problems(sorted(out.glob("*.tex")), tmp_path / "latex") == ""


def test_columns_option_sets_every_tables_columns(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "tables"
    ranked_runs(root)
    RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--columns", "R@1", "R@10", "MAP@R"])
    sop = (out / "table_online_products.tex").read_text()
    assert "Method & R@1 & R@10 & MAP@R & Epoch & Seeds \\\\" in sop and latex_problems(sop) == []
    cub = (out / "table_cub200.tex").read_text()
    assert "Method & R@1 & R@10 & MAP@R & Epoch & Seeds \\\\" in cub  # CUB has no R@10: "-"
    # mean ± the t-intervals' half-widths (2 seeds: the std × 12.706 / √2)
    assert "Multisimilarity & $\\mathbf{62.50}\\pm6.35$ & - & $\\mathbf{20.83}\\pm2.12$ &" in cub
    shared = (out / "table_shared.tex").read_text()
    assert " & \\multicolumn{3}{c}{CUB200-2011} & \\multicolumn{3}{c}{SOP} \\\\" in shared
    assert "\\cmidrule(lr){2-4}\\cmidrule(lr){5-7}" in shared and latex_problems(shared) == []
    assert "| Method | R@1 | R@10 | MAP@R | Epoch | Seeds | Selected on |" in (out / "results.md").read_text()
    capsys.readouterr()
    RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--columns", "R@1", "c_nmi"])
    assert "--columns NMI (cosine): no run recorded testing/c_nmi" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        RE.main(["--runs", str(root), "--out", str(out), "--columns", "R@1 & NMI"])
    assert exc.value.code == 2 and "--columns: unknown column 'R@1 & NMI'" in capsys.readouterr().err


def test_cost_columns_with_missing_compute_shown_as_a_dash(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "tables"
    ranked_runs(root)
    RE.main(["--runs", str(root), "--out", str(out), "--no_figures"])
    assert "Train img/s" not in (out / "table_cub200.tex").read_text()  # only with --cost
    with (out / "results.csv").open() as f:
        assert not any(c.startswith("compute/") for c in next(csv.reader(f)))
    assert not (out / "table_cub200_cost.tex").exists()
    RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--cost"])
    assert "Train img/s" not in (out / "table_cub200.tex").read_text()  # a page holds no more columns
    cub = (out / "table_cub200_cost.tex").read_text()  # the cost: a table of its own
    assert latex_problems(cub) == []
    assert ("Method & R@1 & Seeds & Train img/s & Eval img/s & Wall (h) & GPU mem (GB) & Host mem (GB) \\\\"
            in cub)  # fmt: skip
    rows = {x.split(" & ")[0]: x for x in cub.splitlines() if " & " in x}
    assert rows["Multisimilarity"].endswith("& 2 & 410 & 1903 & 5.00 & 10.0 & 6.0 \\\\")  # means over seeds
    assert rows["Margin (D, $\\beta$=1.2)"].endswith("& 2 & -- & -- & -- & -- & -- \\\\")  # no compute dict
    assert rows["Contrastive"].endswith("& 1 & 412 & 1903 & 5.00 & -- & 6.0 \\\\")  # CPU: no GPU memory
    assert "-- where the runs did not record it" in cub
    md = (out / "results.md").read_text()
    assert (
        "| Seeds | Train img/s | Eval img/s | Wall (h) | GPU mem (GB) | Host mem (GB) | Selected on |" in md
    )
    assert "| 2 | – | – | – | – | – | validation |" in md
    with (out / "results.csv").open() as f:
        table = {(r["dataset"], r["group"], r["protocol"]): r for r in csv.DictReader(f)}
    ms = table[("cub200", "CUB_MS", RE.SELECTED)]
    assert float(ms["compute/train_images_per_s|mean"]) == pytest.approx(410.0)
    assert table[("cub200", "CUB_Margin_b12_Distance", RE.SELECTED)]["compute/wall_time_s|mean"] == "–"
    assert table[("cub200", "CUB_Contrastive", RE.SELECTED)]["compute/peak_gpu_mem_mb|mean"] == "–"
    if shutil.which("pdflatex"):
        assert compile_problems(sorted(out.glob("table_*.tex")), tmp_path / "latex") == ""
