"""Revisit_Runs.sh: the study's 335 command lines, and the digits sweep run end to end (tiny),
restarted (finished runs skipped, a killed one resumed) and turned into a table."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import Counter

import pytest

import main
import Result_Evaluations as RE
from tests.lifecycle._runs import ROOT

SCRIPT = ROOT / "Revisit_Runs.sh"
# the script's settings: a test sets the ones it means, none leaks in from the caller's shell
SCRIPT_ENV = set("SEEDS EXTRA_ARGS LOG_ONLINE datapath NPROC TORCHRUN_ARGS CV_FOLDS CV_SCHEME".split())


def script(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env | env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_study_is_67_groups_times_5_seeds():
    lines = script("list").stdout.splitlines()
    assert len(lines) == 335
    flags = [shlex.split(line)[2:] for line in lines]
    groups = Counter(f[f.index("--group") + 1] for f in flags)
    assert len(groups) == 67 and set(groups.values()) == {5}
    per_dataset = Counter(f[f.index("--dataset") + 1] for f in flags)
    assert per_dataset == {"cub200": 115, "cars196": 115, "online_products": 105}
    assert "CUBreg_SNR_Distance_3" in groups  # the study's "CUBreg_SNR_Distance _3" (stray space)
    epochs = {f[f.index("--dataset") + 1]: f[f.index("--n_epochs") + 1] for f in flags}
    assert epochs == {"cub200": "150", "cars196": "150", "online_products": "100"}
    assert all("$datapath" in f for f in flags)
    sop_hist = next(f for f in flags if "SOP_Histogram" in f)
    assert sop_hist[sop_hist.index("--loss_histogram_nbins") + 1] == "11"


def test_every_study_line_parses_and_names_registered_plugins():
    import batch_mining
    import criteria
    import datasets
    import parameters

    parser = parameters.build_parser()
    for line in script("list").stdout.splitlines():
        opt = parser.parse_args(shlex.split(line)[2:])  # an unknown flag exits here
        assert opt.loss in criteria.REGISTRY.names(), line
        assert opt.batch_mining in batch_mining.REGISTRY.names(), line
        assert opt.dataset in datasets.REGISTRY.names(), line
        assert opt.source_path == "$datapath" and opt.savename == f"{opt.group}_s{opt.seed}"


def test_nproc_launches_every_run_with_torchrun():
    plain = script("list", "cub200", "CUB_Margin_b12_Distance").stdout.splitlines()
    lines = script("list", "cub200", "CUB_Margin_b12_Distance", NPROC="4").stdout.splitlines()
    prefix = "python -m torch.distributed.run --standalone --nproc_per_node 4 main.py "
    assert len(lines) == 5 and all(line.startswith(prefix) for line in lines)
    assert [line[len(prefix) :] for line in lines] == [p[len("python main.py ") :] for p in plain]
    bs = {int(shlex.split(line)[shlex.split(line).index("--bs") + 1]) for line in lines}
    assert bs == {112} and 112 % 4 == 0  # the global batch is unchanged
    nodes = script("list", "digits", NPROC="2", TORCHRUN_ARGS="--nnodes 2 --rdzv_endpoint h:1").stdout
    assert nodes.splitlines()[0].startswith("python -m torch.distributed.run --nnodes 2 --rdzv_endpoint h:1 ")


def test_selection_and_bad_input():
    assert len(script("list", "cars196", "CARreg_Contrastive").stdout.splitlines()) == 5
    assert script("groups", "online_products").stdout.split()[:2] == ["SOP_Npair", "SOP_GenLifted"]
    assert script("list", "mnist").returncode == 2
    assert script("list", "cub200", "NoSuchGroup").returncode == 2
    run = script("run", "cub200")  # the study needs $datapath
    assert run.returncode == 2 and "datapath" in run.stderr


def test_digits_sweep_runs_restarts_and_aggregates(tmp_path):
    save = tmp_path / "results"
    groups = "DIG_Margin_b12_Distance DIG_MS"
    tiny = "--n_epochs 1 --evaluation_metrics e_recall@1 mAP@R nmi --no_progress --embed_dim 16"
    env = {"SEEDS": "0 1", "EXTRA_ARGS": tiny, "save_path": str(save)}
    lines = script("list", "digits", groups, **env).stdout.splitlines()
    assert len(lines) == 4
    for line in lines:  # exactly the script's command lines, run in-process to save interpreter starts
        main.main(shlex.split(line)[2:])

    # restart: finished runs are skipped; a run killed before it finished is resumed
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    recorder.chmod(0o755)
    (save / "digits" / "DIG_MS_s1" / "summary.json").unlink()
    out = script("run", "digits", groups, PYTHON=str(recorder), **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("skip") == 3
    assert (tmp_path / "calls").read_text().split() == [
        "main.py",
        "--resume",
        str(save / "digits" / "DIG_MS_s1"),
    ]
    main.main(["--resume", str(save / "digits" / "DIG_MS_s1")])

    rows = RE.main(["--runs", str(save), "--out", str(tmp_path / "tables"), "--no_figures"])
    selected = [r for r in rows if r["protocol"] == RE.SELECTED]
    assert {(r["group"], r["n_seeds"], r["selection_split"]) for r in selected} == {
        ("DIG_Margin_b12_Distance", 2, "validation"), ("DIG_MS", 2, "validation"),
    }  # fmt: skip
    for r in selected:
        assert 0.0 < r["testing/e_recall@1|mean"] <= 1.0
    table = (tmp_path / "tables" / "table_digits.tex").read_text()
    assert "Multisimilarity &" in table and "Margin (D, $\\beta$=1.2) &" in table


def test_cv_folds_turn_every_run_into_its_folds():
    """CV_FOLDS=4: each seed of a group becomes 4 fold runs, otherwise the same command line."""
    import parameters

    plain = script("list", "cub200", "CUB_Margin_b12_Distance").stdout.splitlines()
    lines = script("list", "cub200", "CUB_Margin_b12_Distance", CV_FOLDS="4").stdout.splitlines()
    assert len(lines) == 4 * len(plain) == 20
    parser = parameters.build_parser()
    seen = set()
    for n, line in enumerate(lines):
        opt = parser.parse_args(shlex.split(line)[2:])
        fold, seed = n % 4, n // 4  # the folds of a seed run one after another
        assert (opt.cv_folds, opt.cv_fold, opt.cv_scheme, opt.seed) == (4, fold, "random", seed)
        assert opt.group == f"CUB_Margin_b12_Distance_f{fold}"
        assert opt.savename == f"CUB_Margin_b12_Distance_f{fold}_s{seed}"
        own = f" --group {opt.group} --savename {opt.savename} --cv_folds 4 --cv_fold {fold}"
        own += " --cv_scheme random"
        base = plain[seed].replace(" --group CUB_Margin_b12_Distance --savename CUB_Margin_b12_Distance_s"
                                   f"{seed}", "")  # fmt: skip
        assert line.replace(own, "") == base
        seen.add((seed, fold))
    assert len(seen) == 20
    mlrc = script("list", "cars196", "CARS_MS", CV_FOLDS="4", CV_SCHEME="mlrc").stdout.splitlines()
    assert len(mlrc) == 20 and all(line.count("--cv_scheme mlrc") == 1 for line in mlrc)
    groups = script("groups", "digits", CV_FOLDS="2").stdout.split()
    assert groups[:4] == ["DIG_Margin_b12_Distance_f0", "DIG_Margin_b12_Distance_f1", "DIG_Triplet_Semihard_f0",
                          "DIG_Triplet_Semihard_f1"]  # fmt: skip
    assert len(groups) == 10
    for bad in ({"CV_FOLDS": "four"}, {"CV_FOLDS": "4", "CV_SCHEME": "kfold"}):
        assert script("list", "digits", **bad).returncode == 2


def test_cv_folds_of_the_digits_sweep_run_skip_and_resume(tmp_path):
    """The digits sweep drops its --use_tv_split for folds (main.py refuses both); run skips a
    finished fold and resumes a killed one like any other run."""
    import parameters

    lines = script("list", "digits", "DIG_MS", CV_FOLDS="2", SEEDS="3").stdout.splitlines()
    assert len(lines) == 2 and not any("--use_tv_split" in line or "--tv_split_by" in line for line in lines)
    for line in lines:
        parameters.build_parser().parse_args(shlex.split(line)[2:])
    save = tmp_path / "results"
    (save / "digits" / "DIG_MS_f0_s3").mkdir(parents=True)
    (save / "digits" / "DIG_MS_f0_s3" / "summary.json").write_text("{}")
    (save / "digits" / "DIG_MS_f1_s3").mkdir()
    (save / "digits" / "DIG_MS_f1_s3" / "args.json").write_text("{}")
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    recorder.chmod(0o755)
    out = script("run", "digits", "DIG_MS", PYTHON=str(recorder), CV_FOLDS="2", SEEDS="3 4",
                 save_path=str(save))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "skip DIG_MS_f0 seed 3" in out.stdout and "resume DIG_MS_f1 seed 3" in out.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"main.py --resume {save / 'digits' / 'DIG_MS_f1_s3'}"
    assert [shlex.split(c)[shlex.split(c).index("--savename") + 1] for c in calls[1:]] == [
        "DIG_MS_f0_s4", "DIG_MS_f1_s4",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["list foo", "frobnicate digits"])
def test_unknown_command_or_dataset_fails(bad):
    assert script(*bad.split()).returncode == 2
