"""tune.py: the search space and its refusals, a digits search with reproductions, pruning, the
budget and dead-worker re-queueing, and a killed worker's trial resumed while two workers share
the study."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import scipy.stats
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import main
import parameters
import tune
from tests.lifecycle._runs import ROOT, tiny_args
from utilities.errors import ConfigError

SPACE = ["lr=loguniform:1e-4:1e-2", "samples_per_class=choice:2,4"]


def _without(flags: list[str], *names: str) -> list[str]:
    """``flags`` minus each ``--name value`` pair."""
    out, skip = [], False
    for token in flags:
        if skip:
            skip = False
        elif token in names:
            skip = True
        else:
            out.append(token)
    return out


def digits_flags(save: Path, *extra: str, epochs: int = 2) -> list[str]:
    """The tiny digits run of the lifecycle tests, with a 2-class validation split; tune.py names
    the runs and searches --lr and --samples_per_class."""
    flags = _without(tiny_args(save, "x", epochs=epochs), "--savename", "--lr", "--samples_per_class")
    return [*flags, "--use_tv_split", "--tv_split_perc", "0.6", "--no_train_metrics", *extra]


def tune_argv(save: Path, study: str, *own: str, n_trials: int = 4, main_extra=(), epochs: int = 2):
    return [
        "--study", study, "--search", *SPACE, "--n_trials", str(n_trials), "--pruner", "none", *own,
        "--", *digits_flags(save, *main_extra, epochs=epochs),
    ]  # fmt: skip


def read_trials(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open() as f:
        return list(csv.DictReader(f))


# ---- the space and what is refused -------------------------------------------------------------------


def test_specs_become_optuna_distributions():
    assert tune.parse_spec("lr=loguniform:1e-6:1e-3") == ("lr", FloatDistribution(1e-6, 1e-3, log=True))
    assert tune.parse_spec("--loss_margin_beta=uniform:0.6:1.6") == (
        "loss_margin_beta",
        FloatDistribution(0.6, 1.6),
    )
    assert tune.parse_spec("n_epochs=int:2:9") == ("n_epochs", IntDistribution(2, 9))
    assert tune.parse_spec("embed_dim=intlog:16:512") == ("embed_dim", IntDistribution(16, 512, log=True))
    name, dist = tune.parse_spec("samples_per_class=choice:2,4,8")
    assert name == "samples_per_class" and dist == CategoricalDistribution([2, 4, 8])
    assert all(type(c) is int for c in dist.choices)  # numbers stay numbers
    assert tune.parse_spec("optim=choice:adam,sgd")[1].choices == ("adam", "sgd")
    assert tune.parse_spec("gamma=choice:0.5,1")[1].choices == (0.5, 1)
    assert tune.param_argv({"lr": 1e-5, "optim": "sgd", "bs": 8}) == [
        "--lr",
        "1e-05",
        "--optim",
        "sgd",
        "--bs",
        "8",
    ]


BAD = [
    (["--search", "lr=gauss:0:1"], "expected NAME=KIND:ARGS"),
    (["--search", "lr=uniform:1"], "uniform takes LOW:HIGH"),
    (["--search", "lr=uniform:3:1"], "LOW 3.0 is above HIGH 1.0"),
    (["--search", "lr=loguniform:0:1"], "loguniform needs LOW > 0"),
    (["--search", "bs=int:8:x"], "'x' is not an integer"),
    (["--search", "optim=choice:adam,,sgd"], "empty choice"),
    (["--search", "foo=uniform:0:1"], "main.py has no flag --foo"),
    (["--search", "lr=uniform:-1:1"], "argument --lr: must be >= 0, got '-1.0'"),
    (["--search", "train_eval_every=uniform:1:4"], "argument --train_eval_every: invalid int value: '1.0'"),
    (["--search", "optim=choice:adam,lbfgs"], "argument --optim: invalid choice: 'lbfgs'"),
    (["--search", "loss=choice:margin,no_such_loss"], "no_such_loss"),
    (["--search", "use_tv_split=choice:0,1"], "--use_tv_split is a switch"),
    (["--search", "tau=int:1:9"], "--tau takes a list"),
    (["--search", "seed=int:0:9"], "--seed is not searched"),
    (["--search", "lr=uniform:0:1", "--search", "lr=uniform:0:2"], "--lr is searched twice"),
    (["--objective", "testing/e_recall@1"], "searching on the test split is refused"),
    (["--objective", "e_recall@1"], "expected SPLIT/METRIC"),
    (["--objective", "evaluation/e_recall@1"], "search on the validation split"),
    (["--objective", "validation/e_recall@8"], "the runs do not compute e_recall@8"),
    (["--objective", "validation/no_metric"], "validation/no_metric"),
    (["--reproductions", "3", "--reproduction_seeds", "1", "2"], "--reproductions 3 but 2"),
]


@pytest.mark.parametrize(("own", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, own, message):
    search = [] if "--search" in own else ["--search", "lr=uniform:0.001:0.01"]
    argv = ["--study", "s", "--n_trials", "2", *search, *own, "--", *digits_flags(tmp_path)]
    _refused(monkeypatch, capsys, argv, message)
    assert not (tmp_path / "tune").exists()  # refused before the study folder is made


BAD_MAIN_FLAGS = [
    (["--no_such_flag", "3"], "unrecognized arguments: --no_such_flag 3"),
    (["--savename", "mine"], "tune.py sets --savename itself"),
    (["--lr", "0.1"], "--lr is also given after --"),
    (["--cv_fold", "1"], "tune.py sets --cv_fold itself"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_MAIN_FLAGS, ids=[m for _, m in BAD_MAIN_FLAGS])
def test_bad_main_flags_are_refused(tmp_path, monkeypatch, capsys, extra, message):
    argv = ["--study", "s", "--search", "lr=uniform:0.001:0.01", "--n_trials", "2"]
    _refused(monkeypatch, capsys, [*argv, "--", *digits_flags(tmp_path), *extra], message)


def test_validation_needs_a_validation_split(tmp_path, monkeypatch, capsys):
    flags = [f for f in digits_flags(tmp_path) if f != "--use_tv_split"]
    argv = ["--study", "s", "--search", "lr=uniform:0.001:0.01", "--n_trials", "2", "--", *flags]
    _refused(monkeypatch, capsys, argv, "the runs have no validation split")
    folds = tune.prepare([*argv[:6], "--cv_folds", "3", "--", *flags])  # folds are one
    assert folds.folds == 3 and folds.split == "validation"
    both = [*argv[:6], "--cv_folds", "3", "--", *flags, "--use_tv_split"]
    _refused(monkeypatch, capsys, both, "--cv_folds excludes --use_tv_split")
    sweep = [*argv[:6], "--cv_folds", "3", "--wandb_sweep", "s.yaml", "--", *flags]
    _refused(monkeypatch, capsys, sweep, "cannot average --cv_folds")


def _refused(monkeypatch, capsys, argv: list[str], message: str) -> None:
    monkeypatch.setattr(sys, "argv", ["tune.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        tune.cli()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


# ---- workers: the budget, dead workers, one command per study ----------------------------------------------


def test_claims_keep_the_budget_and_requeue_a_dead_workers_trial(tmp_path):
    setup = tune.prepare(tune_argv(tmp_path, "claims", n_trials=2))
    study, storage, worker = tune.open_study(setup)
    assert worker == 0
    first, second = tune.claim(setup, study, storage), tune.claim(setup, study, storage)
    assert (first.number, second.number) == (0, 1)
    assert tune.claim(setup, study, storage) is None  # two running trials take a budget of 2
    storage.set_trial_user_attr(first._trial_id, "run_folders", ["/runs/claims_t0"])

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid no longer exists
    storage.set_trial_user_attr(first._trial_id, "worker", f"{socket.gethostname()}:{gone.pid}")
    retry = tune.claim(setup, study, storage)
    frozen = storage.get_trial(retry._trial_id)
    assert retry.number == 2 and frozen.system_attrs["failed_trial"] == 0
    assert retry.params == first.params and frozen.user_attrs["run_folders"] == ["/runs/claims_t0"]
    assert storage.get_trial(first._trial_id).state == TrialState.FAIL
    assert tune.claim(setup, study, storage) is None  # the retry took the dead trial's place

    study.tell(second, 0.5)
    study.tell(retry, 0.7)
    assert tune.claim(setup, study, storage) is None  # 2 finished
    setup.args.n_trials = 3  # a larger budget on a later start continues the study
    assert tune.claim(setup, study, storage).number == 3

    again = tune.prepare(tune_argv(tmp_path, "claims", n_trials=2, main_extra=["--kernels", "1"]))
    assert tune.open_study(again)[2] == 1  # runtime flags may differ; the next worker's index
    other = tune.prepare(tune_argv(tmp_path, "claims", "--objective", "validation/e_recall@2", n_trials=2))
    with pytest.raises(ConfigError, match="this command's objective differ"):
        tune.open_study(other)
    longer = tune.prepare(tune_argv(tmp_path, "claims", n_trials=2, epochs=3))
    with pytest.raises(ConfigError, match=r"this command's main\.py flags differ"):
        tune.open_study(longer)


def test_wandb_sweep_exports_the_same_space(tmp_path):
    setup = tune.prepare(tune_argv(tmp_path, "sweep"))
    text = tune.wandb_sweep(setup)
    config = yaml.safe_load(text)
    assert config["method"] == "bayes" and config["program"] == "main.py"
    assert config["metric"] == {"name": "metrics/validation/e_recall@1", "goal": "maximize"}
    assert config["parameters"] == {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "samples_per_class": {"values": [2, 4]},
    }
    command = config["command"]
    assert command[:3] == ["${env}", "python", "${program}"] and command[-1] == "${args}"
    assert command[3 : 3 + len(setup.fixed)] == setup.fixed and "--log_online" in command
    # W&B passes --name=value: main.py's parser takes the fixed flags plus that form
    opt = parameters.build_parser().parse_args([*command[3:-1], "--lr=0.002", "--samples_per_class=4"])
    assert opt.lr == 0.002 and opt.samples_per_class == 4 and opt.use_tv_split and opt.log_online


# ---- end to end ------------------------------------------------------------------------------------------------


def test_main_stops_cleanly_when_the_epoch_hook_says_so(tmp_path):
    seen = []

    def hook(epoch, results, folder):
        seen.append((epoch, sorted(k for k, v in results.items() if v is not None), folder))
        raise main.RunStopped("enough")

    summary = main.main(tiny_args(tmp_path, "stop", "--use_tv_split", "--no_train_metrics"), on_epoch=hook)
    folder = tmp_path / "digits" / "stop"
    assert seen == [(0, ["testing", "validation"], folder)]
    assert summary["stopped"] == {"after_epoch": 0, "reason": "enough"} and summary["selected_epoch"] == 0
    assert json.loads((folder / "summary.json").read_text())["stopped"]["after_epoch"] == 0
    with (folder / "metrics.csv").open() as f:
        assert {row["epoch"] for row in csv.DictReader(f)} == {"0"}
    assert (folder / "checkpoint_last.pt").is_file()


def test_digits_search_then_reproductions(tmp_path):
    result = tune.main(tune_argv(tmp_path, "dig", "--reproductions", "2"))
    folder = tmp_path / "tune" / "dig"
    assert result["folder"] == folder and result["ran"] == [0, 1, 2, 3]
    rows = read_trials(folder)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert len({(r["param_lr"], r["param_samples_per_class"]) for r in rows}) == 4
    for row in rows:
        run = Path(row["run_folder"])
        assert run == tmp_path / "digits" / f"dig_t{row['number']}"
        args = json.loads((run / "args.json").read_text())["args"]
        assert args["group"] == "dig_trial" and float(row["param_lr"]) == args["lr"]
        assert args["samples_per_class"] == int(row["param_samples_per_class"])
        assert args["storage_metrics"] == ["e_recall@1"]  # epochs selected on the objective's metric
        summary = json.loads((run / "summary.json").read_text())
        assert float(row["value"]) == summary["metrics"]["validation"]["e_recall@1"]
        assert float(row["duration_s"]) > 0
    best = json.loads((folder / "best.json").read_text())
    assert best["value"] == max(float(r["value"]) for r in rows)
    assert best["trial"] == min(int(r["number"]) for r in rows if float(r["value"]) == best["value"])
    assert best["main_flags"][-4:] == ["--lr", repr(best["params"]["lr"]), "--samples_per_class",
                                       str(best["params"]["samples_per_class"])]  # fmt: skip
    assert set(result["figures"]) == {"history.png", "intermediate.png", "importance.png"}
    assert all((folder / name).stat().st_size > 0 for name in result["figures"])

    repro = json.loads((folder / "reproductions.json").read_text())
    values = []
    for seed in (0, 1):
        run = tmp_path / "digits" / f"dig_best_t{best['trial']}_s{seed}"
        args = json.loads((run / "args.json").read_text())["args"]
        assert args["seed"] == seed and args["group"] == "dig_best" and args["lr"] == best["params"]["lr"]
        values.append(json.loads((run / "summary.json").read_text())["metrics"]["testing"]["e_recall@1"])
    low, high = scipy.stats.t.interval(0.95, df=1, loc=sum(values) / 2, scale=scipy.stats.sem(values))
    assert repro["values"] == values and repro["mean"] == pytest.approx(sum(values) / 2, rel=1e-12)
    assert repro["ci95"] == pytest.approx([low, high], rel=1e-9)
    assert repro["seeds"] == [0, 1] and repro["metric"] == "testing/e_recall@1"

    again = tune.main(tune_argv(tmp_path, "dig", "--reproductions", "2"))  # a finished study: no new run
    assert again["ran"] == [] and again["reproductions"]["values"] == values


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_trial_stops_its_run_after_the_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "make_pruner", lambda setup: _AlwaysPrune())
    result = tune.main(tune_argv(tmp_path, "pr", n_trials=1))
    [row] = read_trials(result["folder"])
    assert row["state"] == "PRUNED" and result["ran"] == [0] and result["best"] is None
    summary = json.loads((Path(row["run_folder"]) / "summary.json").read_text())
    assert summary["stopped"]["after_epoch"] == 0 and "pruned by tune.py" in summary["stopped"]["reason"]


def _tune_process(argv: list[str], kill_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DML_TEST_KILL_AT"}
    if kill_at:
        env["DML_TEST_KILL_AT"] = kill_at
    command = [sys.executable, str(ROOT / "tune.py"), *argv]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_a_running_trial(study_db: Path, process: subprocess.Popen) -> None:
    """Until ``process`` holds a RUNNING trial of the study (it has claimed one)."""
    storage = f"sqlite:///{study_db}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        study = optuna.load_study(study_name="kill", storage=storage)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(t.user_attrs.get("worker", "").endswith(f":{process.pid}") for t in running):
            return
        time.sleep(0.5)
    raise AssertionError(f"worker {process.pid} claimed no trial: {process.communicate()[0][-2000:]}")


def test_a_killed_trial_resumes_while_two_workers_share_the_study(tmp_path):
    argv = tune_argv(tmp_path, "kill")
    first = _tune_process(argv, kill_at="train:1:0")  # SIGKILL in trial 0's second epoch
    out = first.communicate(timeout=600)[0]
    assert first.returncode == -signal.SIGKILL, out[-2000:]
    run0 = tmp_path / "digits" / "kill_t0"
    assert (run0 / "checkpoint_last.pt").is_file() and not (run0 / "summary.json").exists()

    # Two workers on the default SQLite store: a new process, and (once it holds a trial, so that
    # both take part) this test's process, whose imports are warm.
    other = _tune_process(argv)
    _wait_for_a_running_trial(tmp_path / "tune" / "kill" / "study.db", other)
    here = tune.main(argv)
    out = other.communicate(timeout=600)[0]
    assert other.returncode == 0, out[-2000:]

    rows = read_trials(tmp_path / "tune" / "kill")
    finished = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(finished) == 4 and len({r["run_folder"] for r in finished}) == 4
    assert [r["number"] for r in rows if r["state"] != "COMPLETE"] == ["0"]  # no overrun, no other failure
    there = set(map(int, re.findall(r"^Trial (\d+)(?: \(continues trial 0\))?: lr=", out, flags=re.M)))
    assert there and here["ran"] and not there & set(here["ran"])  # both worked, on distinct trials
    assert there | set(here["ran"]) == {int(r["number"]) for r in finished}
    workers = {r["worker"].rpartition(":")[2] for r in finished}
    assert workers == {str(other.pid), str(os.getpid())}
    [retry] = [r for r in rows if r["retried_from"] == "0"]
    assert retry["state"] == "COMPLETE" and retry["run_folder"] == str(run0)  # the same run folder
    assert "Resumed after epoch 0" in out  # the first claim, from its checkpoint: epoch 1 only
    with (run0 / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f) if r["split"] == "training"] == ["0", "1"]
    assert not (tmp_path / "digits" / f"kill_t{retry['number']}").exists()
