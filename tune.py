"""Hyperparameter search over main.py runs with Optuna: TPE, pruning, resumable, several workers.

    python tune.py --study cub_margin --search lr=loguniform:1e-6:1e-3 loss_margin_beta=uniform:0.6:1.6 \\
        samples_per_class=choice:2,4,8 --n_trials 40 --objective validation/e_recall@1 \\
        --reproductions 5 -- --dataset cub200 --use_tv_split --n_epochs 40 --source_path /data

Everything after ``--`` is main.py's flags, fixed for every trial. ``--search NAME=KIND:ARGS``
names a main.py flag and its Optuna distribution: ``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH``,
``int:LOW:HIGH``, ``intlog:LOW:HIGH``, ``choice:A,B,C`` (numbers stay numbers). Each bound and
choice is parsed by the flag's own type before anything runs.

**Trials.** Every trial is an ordinary main.py run, in this process (no per-trial interpreter or
import cost): ``<save_path>/<dataset>/<study>_t<n>``, group ``<study>_trial``. Its value is the
objective metric at the run's selected epoch (summary.json); unless ``--storage_metrics`` is given,
the runs select epochs on the objective's metric. ``--cv_folds K``: a trial is K class-disjoint
fold runs (``_f<i>``, group ``<study>_trial_f<i>``) and its value the mean over the folds.

**Sampler and pruning.** TPE (Optuna's multivariate default), seeded by ``--sampler_seed`` plus the
index of the worker in the study (the first tune.py process on a study is worker 0, so a single
uninterrupted worker is reproducible and concurrent workers do not draw the same points). After
each epoch the run reports the objective on the validation split (step = epoch, + fold * n_epochs
with folds); ``--pruner median`` / ``hyperband`` stop a trial that is behind the others: the run
ends after that epoch with a complete folder whose summary.json records ``stopped``; the trial is
PRUNED.

**Storage and workers.** Default: SQLite in the study folder ``<save_path>/tune/<study>/study.db``
(nothing to install; write-ahead log, so its workers must run on one host); ``--storage URL`` takes
any SQLAlchemy URL (``postgresql://...`` for workers on several hosts; its driver must be
installed). Several tune.py processes with the same command on one storage share the study.
``--n_trials`` is the study-wide budget of finished (complete or pruned) trials: a worker starts a
trial only while finished + running trials stay below it (the check and the ask hold a lock in the
study folder, so workers sharing that folder never overrun the budget; workers whose study folders
differ, on a server database, may overrun it by a trial at the very end).

**Resume.** Starting the same command again continues the study. A trial left RUNNING by a worker
that died (SIGKILL, power loss, preemption) is failed and re-queued once it is found dead: at once
when its worker ran on this host and its pid is gone, otherwise when Optuna's heartbeat
(``--heartbeat`` seconds; RDB storages) is older than twice the interval. The re-queued trial has a
new number, the same parameters and reported values, and continues the dead trial's run folder with
``main.py --resume``: from its last checkpoint_last.pt, or from epoch 0 in the same folder if the
first epoch had not finished (its run folder is recorded when the trial starts). A run that had
already finished is read, not re-run. Ctrl-C re-queues the running trial the same way. A trial is
retried at most three times. A trial whose training diverges fails and the search goes on; any
other configuration error fails the trial and stops the worker (exit code 2).

**Refused** (one line, exit code 2): a bad search spec, a flag main.py does not know (in
``--search`` or after ``--``), a searched flag that is also fixed, switches and list flags in the
search, flags tune.py sets (``--group --savename --resume --evaluate_only --checkpoint --cv_folds
--cv_fold``; ``--seed --dataset --save_path --config`` may be fixed, not searched), an objective on
the test split ("searching on the test split is refused"), an objective on a split the runs will
not have (validation needs ``--use_tv_split`` or ``--cv_folds``), a metric the runs do not compute,
and a command that differs from the one the study was started with (objective, direction, space,
folds or non-runtime main.py flags).

**Outputs** in the study folder: ``trials.csv`` (number, state, value, parameters, run folders,
duration, worker, retried trial, error; rewritten after a trial at most every 10 s, and at the
end), ``best.json`` (the best trial, its value and the main.py flags that re-run it),
``history.png``, ``intermediate.png`` and ``importance.png`` (Optuna's matplotlib plots; importance
needs two completed trials), ``--wandb_sweep FILE`` the same space as a W&B sweep (method bayes,
the metric at the selected epoch, the fixed flags in its command). ``--reproductions K`` (or
``--reproduction_seeds``): once the study is settled (no trial running or queued), the best trial's
configuration is run with K seeds (group ``<study>_best``, folders ``<study>_best_t<n>_s<seed>``)
and the test-split value of the objective's metric is reported as mean ± 95% Student-t interval
(reproductions.json). ``--log_online`` after ``--`` makes every trial a W&B run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import scipy.stats
import sqlalchemy.exc
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

import main as run_main
import parameters
from evaluation.options import metric_name
from utilities.cli import HelpFormatter, ShortUsageParser, explicit_flags, one_line, run_entry_point
from utilities.errors import ConfigError, TrainingDiverged
from utilities.logger import writing
from utilities.progress import close_bars

log = logging.getLogger("tune")

KINDS = ("uniform", "loguniform", "int", "intlog", "choice")
# main.py flags tune.py sets itself (run names, resume, folds): neither fixed nor searched
OWNED = {"group", "savename", "resume", "evaluate_only", "checkpoint", "cv_folds", "cv_fold"}
# ... and flags that may be fixed but not searched (a "best seed" is noise; where runs live)
NOT_SEARCHED = OWNED | {"seed", "config", "dataset", "save_path"}
# main.py flags that may differ between the workers of one study (where they run, not what)
RUNTIME = parameters.RESUME_OVERRIDABLE - {"resume", "n_epochs"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRY = 3
TABLES_EVERY = 10.0  # seconds between rewrites of trials.csv / best.json during a search (and at its end)
WORKER = f"{socket.gethostname()}:{os.getpid()}"


# ---- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ShortUsageParser(
        prog="tune.py",
        description="Optuna search over main.py runs; main.py's flags follow '--'.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--study", required=True, type=parameters.path_component, help="study name")
    p.add_argument(
        "--search",
        nargs="+",
        action="extend",  # --search a=... --search b=... adds up
        required=True,
        metavar="NAME=KIND:ARGS",
        help=f"searched main.py flags; KIND one of {', '.join(KINDS)} (e.g. lr=loguniform:1e-6:1e-3)",
    )
    p.add_argument(
        "--n_trials",
        type=parameters.non_negative_int,
        required=True,
        help="study-wide budget of finished (complete or pruned) trials",
    )
    p.add_argument(
        "--timeout",
        type=parameters.positive_float,
        default=None,
        help="this worker starts no trial after SECONDS",
    )
    p.add_argument("--objective", default="validation/e_recall@1", help="SPLIT/METRIC to optimise")
    p.add_argument("--direction", default="maximize", choices=["maximize", "minimize"])
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument(
        "--pruner_startup_trials",
        type=parameters.non_negative_int,
        default=5,
        help="median: no pruning before this many trials finished",
    )
    p.add_argument(
        "--pruner_warmup_epochs",
        type=parameters.non_negative_int,
        default=1,
        help="median: no pruning in a run's first epochs",
    )
    p.add_argument("--sampler_seed", type=int, default=0, help="TPE seed (plus the worker's index)")
    p.add_argument(
        "--tpe_startup_trials", type=parameters.positive_int, default=10, help="random trials before TPE"
    )
    p.add_argument("--storage", default=None, help="SQLAlchemy URL; default: SQLite in the study folder")
    p.add_argument(
        "--heartbeat",
        type=parameters.positive_int,
        default=60,
        help="seconds between heartbeats; a trial silent for twice as long is re-queued",
    )
    p.add_argument(
        "--cv_folds",
        type=parameters.non_negative_int,
        default=0,
        help="K > 1: each trial runs K class-disjoint folds; value = mean over folds",
    )
    p.add_argument(
        "--reproductions",
        type=parameters.non_negative_int,
        default=0,
        help="re-run the best configuration with seeds 0..K-1 and report test mean ± 95%% t-interval",
    )
    p.add_argument(
        "--reproduction_seeds",
        type=parameters.non_negative_int,
        nargs="+",
        default=None,
        help="the reproductions' seeds instead of 0..K-1",
    )
    p.add_argument("--wandb_sweep", default=None, metavar="FILE", help="write the space as a W&B sweep YAML")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """tune.py's own flags, and main.py's (after the first ``--``)."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def main_parser(context: str) -> argparse.ArgumentParser:
    """main.py's parser whose errors are a ConfigError prefixed with ``context``."""
    parser = parameters.build_parser()

    def refuse(message: str):
        raise ConfigError(f"{context}: {message}")

    parser.error = refuse
    return parser


# ---- the search space --------------------------------------------------------------------------------------


def _number(text: str, kind: str, item: str) -> float:
    try:
        value = int(text) if kind in ("int", "intlog") else float(text)
    except ValueError:
        wanted = "an integer" if kind in ("int", "intlog") else "a number"
        raise ConfigError(f"--search {item}: {text!r} is not {wanted}") from None
    if not math.isfinite(value):
        raise ConfigError(f"--search {item}: {text!r} is not a finite number")
    return value


def _choice(text: str) -> int | float | str:
    for convert in (int, float):
        try:
            value = convert(text)
        except ValueError:
            continue
        if isinstance(value, int) or math.isfinite(value):
            return value
    return text


def parse_spec(item: str) -> tuple[str, BaseDistribution]:
    """``NAME=KIND:ARGS`` -> (flag name, Optuna distribution)."""
    name, eq, spec = item.partition("=")
    kind, colon, args = spec.partition(":")
    name = name.strip().lstrip("-")
    if not eq or not colon or not name or kind not in KINDS:
        raise ConfigError(
            f"--search {item}: expected NAME=KIND:ARGS with KIND one of {', '.join(KINDS)} "
            "(e.g. lr=loguniform:1e-6:1e-3, samples_per_class=choice:2,4,8)"
        )
    if kind == "choice":
        texts = args.split(",")
        if any(not t for t in texts):
            raise ConfigError(f"--search {item}: empty choice; expected choice:A,B,...")
        values = [_choice(t) for t in texts]
        if len(set(values)) != len(values):
            raise ConfigError(f"--search {item}: a choice is listed twice")
        return name, CategoricalDistribution(values)
    bounds = args.split(":")
    if len(bounds) != 2:
        raise ConfigError(f"--search {item}: {kind} takes LOW:HIGH")
    low, high = (_number(b, kind, item) for b in bounds)
    if low > high:
        raise ConfigError(f"--search {item}: LOW {low} is above HIGH {high}")
    log_scale = kind in ("loguniform", "intlog")
    if log_scale and low <= 0:
        raise ConfigError(f"--search {item}: {kind} needs LOW > 0")
    if kind in ("int", "intlog"):
        return name, IntDistribution(int(low), int(high), log=log_scale)
    return name, FloatDistribution(low, high, log=log_scale)


def candidate_values(dist: BaseDistribution) -> list[Any]:
    """The values each bound check parses: both ends of a range, every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def flag_token(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def param_argv(params: dict[str, Any]) -> list[str]:
    return [t for name, value in params.items() for t in (f"--{name}", flag_token(value))]


def parse_space(items: list[str], fixed: list[str]) -> dict[str, BaseDistribution]:
    """The search space, each flag checked against main.py's parser: it exists, is a plain valued
    flag that tune.py does not set, is not also fixed, and accepts every bound and choice."""
    parser = main_parser("main.py flags after --")
    options = {o.lstrip("-"): a for a in parser._actions for o in a.option_strings if o.startswith("--")}
    given = explicit_flags(parser, fixed)
    space: dict[str, BaseDistribution] = {}
    for item in items:
        name, dist = parse_spec(item)
        action = options.get(name)
        if action is None or name == "help":
            raise ConfigError(f"--search {item}: main.py has no flag --{name}")
        if name != action.dest:  # an alias (--source): the run's flags are keyed by dest
            raise ConfigError(f"--search {item}: use the flag's full name --{action.dest}")
        if name in NOT_SEARCHED:
            why = "tune.py sets it itself" if name in OWNED else "fix it after -- instead"
            raise ConfigError(f"--search {item}: --{name} is not searched ({why})")
        if action.nargs == 0:
            raise ConfigError(f"--search {item}: --{name} is a switch; fix it after -- instead")
        if action.nargs is not None:
            raise ConfigError(
                f"--search {item}: --{name} takes a list; only single-valued flags are searched"
            )
        if name in space:
            raise ConfigError(f"--search {item}: --{name} is searched twice")
        if name in given:
            raise ConfigError(f"--search {item}: --{name} is also given after --; give it in one place")
        check = main_parser(f"--search {item}")
        for value in candidate_values(dist):
            opt = check.parse_args([*fixed, f"--{name}", flag_token(value)])
            parameters.check_plugin_names(parameters.with_presets(opt))
        space[name] = dist
    return space


# ---- the fixed main.py flags and the objective -------------------------------------------------------------


@dataclass
class Setup:
    """Everything one worker needs, checked before the study is opened."""

    args: argparse.Namespace
    fixed: list[str]  # main.py flags of every trial (with --storage_metrics added when absent)
    space: dict[str, BaseDistribution]
    split: str
    metric: str
    opt: argparse.Namespace  # main.py's namespace of the fixed flags (defaults resolved)
    folder: Path  # the study folder
    folds: int  # runs per trial (1 without --cv_folds)
    explicit: dict[str, Any] = field(default_factory=dict)
    stale_checked: float = -math.inf  # when this worker last looked for stale heartbeats

    @property
    def run_root(self) -> Path:
        """Where the runs go, absolute: recorded folders must not depend on the worker's cwd."""
        return Path(os.path.abspath(self.opt.save_path)) / self.opt.dataset


def check_main_flags(fixed: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = main_parser("main.py flags after --")
    opt = parser.parse_args(fixed)
    if opt.config:  # the stored flags count as given (they reach every trial through --config)
        opt = parser.parse_args([*parameters.config_argv(parser, opt.config), *fixed])
    explicit = explicit_flags(parser, fixed)
    owned = sorted(OWNED & set(explicit))
    if owned:
        raise ConfigError(
            f"main.py flags after --: tune.py sets {', '.join('--' + k for k in owned)} itself "
            "(runs are <study>_t<n>; folds: tune.py --cv_folds)"
        )
    parameters.check_plugin_names(parameters.with_presets(opt))
    return opt, explicit


def check_objective(objective: str, opt: argparse.Namespace, folds: int) -> tuple[str, str]:
    split, slash, metric = objective.partition("/")
    if not slash or not split or not metric:
        raise ConfigError(f"--objective {objective}: expected SPLIT/METRIC, e.g. validation/e_recall@1")
    if split == "testing":
        raise ConfigError(
            f"--objective {objective}: searching on the test split is refused (the reported numbers "
            f"would be selected on); use validation/{metric} with --use_tv_split or --cv_folds"
        )
    if split != "validation":
        raise ConfigError(
            f"--objective {objective}: search on the validation split (--use_tv_split or --cv_folds), "
            f"not {split!r}"
        )
    if not (opt.use_tv_split or folds > 1):
        raise ConfigError(
            f"--objective {objective}: the runs have no validation split; add --use_tv_split after -- "
            "or give tune.py --cv_folds K"
        )
    try:
        metric_name(metric)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"--objective {objective}: {err}") from None
    if metric not in opt.evaluation_metrics:
        raise ConfigError(
            f"--objective {objective}: the runs do not compute {metric} "
            f"(--evaluation_metrics {' '.join(opt.evaluation_metrics)})"
        )
    return split, metric


def prepare(argv: list[str]) -> Setup:
    own, fixed = split_argv(argv)
    args = build_parser().parse_args(own)
    folds = args.cv_folds if args.cv_folds > 1 else 1
    opt, explicit = check_main_flags(fixed)
    if folds > 1 and opt.use_tv_split:
        raise ConfigError("--cv_folds excludes --use_tv_split (the held-out fold is the validation split)")
    split, metric = check_objective(args.objective, opt, folds)
    space = parse_space(args.search, fixed)
    if "storage_metrics" not in explicit:  # select each run's epoch on the objective's metric
        fixed = [*fixed, "--storage_metrics", metric]
    elif opt.storage_metrics[0] != metric:
        log.warning(
            f"the runs select epochs on {opt.storage_metrics[0]} (--storage_metrics); the objective is "
            f"{metric} at that epoch"
        )
    seeds = args.reproduction_seeds
    if seeds is not None and args.reproductions not in (0, len(seeds)):
        raise ConfigError(f"--reproductions {args.reproductions} but {len(seeds)} --reproduction_seeds")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError("--reproduction_seeds: a seed is listed twice")
    if args.wandb_sweep and folds > 1:
        raise ConfigError("--wandb_sweep: a W&B sweep optimises single runs; it cannot average --cv_folds")
    folder = Path(opt.save_path) / "tune" / args.study
    return Setup(args, fixed, space, split, metric, opt, folder, folds, explicit)


# ---- storage, study, worker coordination -------------------------------------------------------------------


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Without Optuna's notes on its experimental features (heartbeat, retries, plots) and on
    heartbeats outside Study.optimize (this worker's loop records them itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
        yield


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed), released on exit or process death."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shown_url(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _sqlite_pragmas(connection, _record) -> None:
    """Write-ahead log, synced at checkpoints only: a commit no longer waits for two fsyncs (on a
    slow disk that was 2/3 of the search machinery's time per trial). Still atomic when a process
    is killed; a power loss may drop the last commits but not corrupt the file."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    sqlite = url.startswith("sqlite")
    # SQLite: a writer waits for another worker's transaction instead of failing at once
    engine = {"connect_args": {"timeout": 60}} if sqlite else {}
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=RETRY,
        )
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise ConfigError(f"--storage {_shown_url(url)}: cannot open it: {one_line(err)}") from None
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # the connections opened while checking the schema: reopened with them
    return storage


def settings(setup: Setup) -> dict[str, Any]:
    """What every worker of a study must share (stored with the study at creation)."""
    return {
        "objective": setup.args.objective,
        "direction": setup.args.direction,
        "space": {k: distribution_to_json(v) for k, v in sorted(setup.space.items())},
        "cv_folds": setup.folds,
        "main_flags": {k: v for k, v in sorted(setup.explicit.items()) if k not in RUNTIME},
    }


def check_settings(study: optuna.Study, setup: Setup) -> None:
    mine = json.loads(json.dumps(settings(setup)))
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", mine)
        return
    differ = [k for k in mine if stored.get(k) != mine[k]]
    if differ:
        what = ", ".join("main.py flags" if k == "main_flags" else k for k in differ)
        raise ConfigError(
            f"study {setup.args.study}: this command's {what} differ from the study's first command; "
            "use the same command (runtime flags such as --kernels or --device may differ) or a new --study"
        )


def make_pruner(setup: Setup) -> optuna.pruners.BasePruner:
    a = setup.args
    if a.pruner == "none":
        return optuna.pruners.NopPruner()
    if a.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=a.pruner_startup_trials, n_warmup_steps=a.pruner_warmup_epochs
        )
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=setup.opt.n_epochs * setup.folds)


def open_study(setup: Setup) -> tuple[optuna.Study, optuna.storages.RDBStorage, int]:
    """Create or load the study; returns it, its storage and this worker's index."""
    with writing(setup.folder):
        setup.folder.mkdir(parents=True, exist_ok=True)
    url = setup.args.storage or f"sqlite:///{(setup.folder / 'study.db').resolve()}"
    with folder_lock(setup.folder / ".lock"), quiet_optuna():  # one worker creates the schema
        storage = open_storage(url, setup.args.heartbeat)
        study = optuna.create_study(
            study_name=setup.args.study,
            storage=storage,
            direction=setup.args.direction,
            load_if_exists=True,
        )
        check_settings(study, setup)
        worker = int(study.user_attrs.get("workers", 0))
        study.set_user_attr("workers", worker + 1)
    study.sampler = optuna.samplers.TPESampler(
        seed=setup.args.sampler_seed + worker, n_startup_trials=setup.args.tpe_startup_trials
    )
    study.pruner = make_pruner(setup)
    return study, storage, worker


with quiet_optuna():  # an experimental class of Optuna 5
    RETRY = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def requeue(study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    """Fail a RUNNING trial and queue its retry; False if another worker finished it first."""
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    RETRY(study, storage.get_trial(trial_id))
    return True


def reclaim_dead(study: optuna.Study, storage: optuna.storages.RDBStorage, trials: list[FrozenTrial]) -> bool:
    """Re-queue the RUNNING trials of ``trials`` whose worker ran on this host and is gone."""
    host, requeued = socket.gethostname(), False
    for t in trials:
        where, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if t.state == TrialState.RUNNING and where == host and pid.isdigit() and not _alive(int(pid)):
            if requeue(study, storage, t._trial_id):
                log.info(f"Trial {t.number}: its worker (pid {pid}) is gone; re-queued to continue its run")
                requeued = True
    return requeued


def claim(setup: Setup, study: optuna.Study, storage: optuna.storages.RDBStorage) -> Trial | None:
    """The next trial of this worker (a queued retry first), or None when the budget is taken."""
    with folder_lock(setup.folder / ".lock"), quiet_optuna():
        trials = study.get_trials(deepcopy=False)
        changed = reclaim_dead(study, storage, trials)
        # heartbeats go stale on the scale of the interval: checking more often finds nothing new
        if time.monotonic() - setup.stale_checked >= setup.args.heartbeat:
            optuna.storages.fail_stale_trials(study)
            setup.stale_checked, changed = time.monotonic(), True
        if changed:
            trials = study.get_trials(deepcopy=False)
        queued = any(t.state == TrialState.WAITING for t in trials)
        taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
        if not queued and taken >= setup.args.n_trials:
            return None
        trial = study.ask(setup.space)
        trial.set_user_attr("worker", WORKER)
    return trial


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, every: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``every`` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except sqlalchemy.exc.SQLAlchemyError as err:  # a busy database must not end the trial
                log.warning(f"heartbeat of trial id {trial_id} not recorded: {one_line(err)}")
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="tune-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---- one trial ---------------------------------------------------------------------------------------------


def run_config(
    setup: Setup,
    params: dict[str, Any],
    *,
    name: str,
    group: str,
    seed: list[str],
    folders: list[str | None],
    on_folder,
    on_epoch=None,
) -> list[dict]:
    """The summaries of the configuration's runs (one per fold), each fresh, resumed from its
    recorded folder (``--resume``) or read when it has finished. ``on_folder(fold, folder)``
    records a run folder; ``on_epoch(fold, epoch, results)`` may raise ``main.RunStopped``."""
    summaries = []
    for fold in range(setup.folds):
        suffix = f"_f{fold}" if setup.folds > 1 else ""
        folder = Path(folders[fold]) if folders[fold] else None

        def hook(epoch: int, results: dict, run_folder: Path, fold: int = fold) -> None:
            if os.path.abspath(run_folder) != folders[fold]:
                on_folder(fold, os.path.abspath(run_folder))
            if on_epoch is not None:
                on_epoch(fold, epoch, results)

        if folder is not None and (folder / "summary.json").is_file():
            summary = json.loads((folder / "summary.json").read_text())
        elif folder is not None and (folder / "args.json").is_file():
            log.info(f"Continuing {folder} (main.py --resume)")
            summary = run_main.main(["--resume", str(folder)], on_epoch=hook)
        else:
            expected = setup.run_root / f"{name}{suffix}"
            if not expected.exists():  # main.py creates exactly this folder: recorded before it starts
                on_folder(fold, str(expected))
            fold_flags = ["--cv_folds", str(setup.folds), "--cv_fold", str(fold)] if setup.folds > 1 else []
            argv = [*setup.fixed, *param_argv(params), *fold_flags, *seed]
            argv += ["--group", f"{group}{suffix}", "--savename", f"{name}{suffix}"]
            summary = run_main.main(argv, on_epoch=hook)
        summaries.append(summary)
        if summary.get("stopped"):
            break
    return summaries


def split_value(summary: dict, split: str, metric: str) -> float:
    value = (summary.get("metrics", {}).get(split) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def run_trial(setup: Setup, study: optuna.Study, storage, trial: Trial) -> tuple[TrialState, float | None]:
    frozen = storage.get_trial(trial._trial_id)
    origin = RETRY.retried_trial_number(frozen)
    # MedianPruner never prunes a warm-up step; asking it would still read every trial
    warmup = setup.args.pruner_warmup_epochs if setup.args.pruner == "median" else 0
    folders: list[str | None] = list(frozen.user_attrs.get("run_folders") or [None] * setup.folds)
    reported = set(frozen.intermediate_values)
    shown = " ".join(f"{k}={flag_token(v)}" for k, v in trial.params.items())
    again = f" (continues trial {origin})" if origin is not None else ""
    log.info(f"Trial {trial.number}{again}: {shown}")

    def on_folder(fold: int, folder: str) -> None:
        folders[fold] = folder
        trial.set_user_attr("run_folders", folders)

    def on_epoch(fold: int, epoch: int, results: dict) -> None:
        value = (results.get(setup.split) or {}).get(setup.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        step = fold * setup.opt.n_epochs + epoch
        if step not in reported:  # a retried trial inherited the steps its dead run reported
            trial.report(float(value), step)
            reported.add(step)
        if step >= warmup and trial.should_prune():
            raise run_main.RunStopped(
                f"pruned by tune.py (study {setup.args.study}, trial {trial.number}, step {step})"
            )

    summaries = run_config(
        setup,
        trial.params,
        name=f"{setup.args.study}_t{trial.number}",
        group=f"{setup.args.study}_trial",
        seed=[],
        folders=folders,
        on_folder=on_folder,
        on_epoch=on_epoch,
    )
    if summaries[-1].get("stopped"):
        return TrialState.PRUNED, None
    values = [split_value(s, setup.split, setup.metric) for s in summaries]
    if not all(math.isfinite(v) for v in values):
        trial.set_user_attr("error", f"no finite {setup.split}/{setup.metric} at the selected epoch")
        return TrialState.FAIL, None
    return TrialState.COMPLETE, sum(values) / len(values)


def search(setup: Setup, study: optuna.Study, storage) -> list[int]:
    """This worker's trials until the budget is taken or ``--timeout`` passed."""
    ran: list[int] = []
    start = written = time.monotonic()
    while setup.args.timeout is None or time.monotonic() - start < setup.args.timeout:
        trial = claim(setup, study, storage)
        if trial is None:
            break
        ran.append(trial.number)
        try:
            with heartbeat(storage, trial._trial_id, setup.args.heartbeat):
                state, value = run_trial(setup, study, storage, trial)
        except KeyboardInterrupt:
            requeue(study, storage, trial._trial_id)
            raise
        except ConfigError as err:
            trial.set_user_attr("error", one_line(err))
            study.tell(trial, state=TrialState.FAIL)
            if not isinstance(err, TrainingDiverged):
                raise
            log.warning(f"Trial {trial.number} failed: {one_line(err)}")
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value, state=state)
            shown = "" if value is None else f" with value {value:.6g}"
            log.info(f"Trial {trial.number} {state.name.lower()}{shown}")
        if time.monotonic() - written >= TABLES_EVERY:
            write_tables(setup, study)
            written = time.monotonic()
    return ran


# ---- outputs -----------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per worker: they may write at once
    tmp.write_text(text)
    os.replace(tmp, path)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(done, key=lambda t: (sign * t.value, -t.number))  # a tie keeps the earliest trial


def write_tables(setup: Setup, study: optuna.Study) -> dict | None:
    """trials.csv and best.json from the storage (all workers' trials)."""
    trials = study.get_trials(deepcopy=False)
    names = list(setup.space)
    continued = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    rows = []
    for t in trials:
        end = t.datetime_complete
        duration = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **{f"param_{n}": t.params.get(n) for n in names},
                "run_folder": ";".join(f for f in t.user_attrs.get("run_folders") or [] if f),
                "duration_s": None if duration is None else round(duration, 3),
                "worker": t.user_attrs.get("worker"),
                "retried_from": t.system_attrs.get("failed_trial"),
                "error": t.user_attrs.get("error")
                or (
                    f"left unfinished; continued by trial {continued[t.number]}"
                    if t.number in continued
                    else None
                ),
            }
        )
    columns = ["number", "state", "value", *(f"param_{n}" for n in names)]
    columns += ["run_folder", "duration_s", "worker", "retried_from", "error"]
    tmp = setup.folder / f".trials.csv.{os.getpid()}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, setup.folder / "trials.csv")
    best = best_trial(study)
    if best is None:
        return None
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (*FINISHED, TrialState.FAIL)}
    info = {
        "study": setup.args.study,
        "objective": setup.args.objective,
        "direction": setup.args.direction,
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "run_folders": best.user_attrs.get("run_folders"),
        "main_flags": [*setup.fixed, *param_argv(best.params)],
        "trials": counts,
    }
    write_atomic(setup.folder / "best.json", json.dumps(info, indent=2))
    return info


def write_figures(study: optuna.Study, folder: Path, objective: str) -> list[str]:
    """Optuna's history, intermediate-value and parameter-importance plots as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        log.info("No completed trial: no figures")
        return []
    figures = {"history.png": lambda s: plots.plot_optimization_history(s, target_name=objective)}
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figures["intermediate.png"] = plots.plot_intermediate_values
    if len(done) >= 2:
        figures["importance.png"] = lambda s: plots.plot_param_importances(s, target_name=objective)
    else:
        log.info("Parameter importance needs 2 completed trials: importance.png not written")
    written = []
    for name, plot in figures.items():
        with matplotlib.rc_context():  # Optuna's plots switch the process's style to ggplot
            try:
                ax = plot(study)
            except (RuntimeError, ValueError) as err:  # e.g. importance of a space with one point
                log.info(f"{name} not written: {one_line(err)}")
                continue
            ax.figure.savefig(folder / name, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
        written.append(name)
    return written


def wandb_sweep(setup: Setup) -> str:
    """The search space as a W&B sweep configuration (YAML text)."""
    params: dict[str, Any] = {}
    for name, dist in setup.space.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = {"values": list(dist.choices)}
        elif isinstance(dist, IntDistribution):
            kind = "q_log_uniform_values" if dist.log else "int_uniform"
            params[name] = {"distribution": kind, "min": dist.low, "max": dist.high}
            if dist.log:
                params[name]["q"] = 1
        else:
            kind = "log_uniform_values" if dist.log else "uniform"
            params[name] = {"distribution": kind, "min": dist.low, "max": dist.high}
    fixed = setup.fixed if "log_online" in setup.explicit else [*setup.fixed, "--log_online"]
    config = {
        "program": "main.py",
        "method": "bayes",
        # main.py writes the value at the selected epoch to the W&B summary under metrics/<split>/<m>
        "metric": {"name": f"metrics/{setup.split}/{setup.metric}", "goal": setup.args.direction},
        "parameters": params,
        "command": [
            "${env}",
            "python",
            "${program}",
            *fixed,
            "--group",
            f"{setup.args.study}_sweep",
            "${args}",
        ],
    }
    header = f"# W&B sweep of tune.py --study {setup.args.study}: the same space, objective and fixed flags\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; (nan, nan) for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = sum(values) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    half = scipy.stats.t.ppf(0.5 + level / 2, n - 1) * sem
    return mean - half, mean + half


def reproduce(setup: Setup, best: FrozenTrial, seeds: list[int]) -> dict:
    """The best configuration with each seed; test mean ± 95% t-interval of the objective's metric."""
    values, validation, runs = [], [], []
    with folder_lock(setup.folder / ".reproduce.lock"):  # a second worker reads the finished runs
        for seed in seeds:
            name = f"{setup.args.study}_best_t{best.number}_s{seed}"
            suffixes = [f"_f{i}" if setup.folds > 1 else "" for i in range(setup.folds)]
            folders: list[str | None] = [
                str(setup.run_root / f"{name}{s}") if (setup.run_root / f"{name}{s}").exists() else None
                for s in suffixes
            ]

            def on_folder(fold: int, folder: str, folders: list[str | None] = folders) -> None:
                folders[fold] = folder

            summaries = run_config(
                setup,
                best.params,
                name=name,
                group=f"{setup.args.study}_best",
                seed=["--seed", str(seed)],
                folders=folders,
                on_folder=on_folder,
            )
            values.append(sum(split_value(s, "testing", setup.metric) for s in summaries) / len(summaries))
            validation.append(
                sum(split_value(s, setup.split, setup.metric) for s in summaries) / len(summaries)
            )
            runs.append(folders)
    low, high = t_interval(values)
    mean = sum(values) / len(values)
    result = {
        "trial": best.number,
        "params": best.params,
        "metric": f"testing/{setup.metric}",
        "seeds": seeds,
        "values": values,
        "validation_values": validation,
        "mean": mean,
        "ci95": [low, high],
        "half_width": (high - low) / 2,
        "interval": "Student-t, 95%, sample std (ddof 1)",
        "runs": runs,
    }
    write_atomic(setup.folder / "reproductions.json", json.dumps(result, indent=2, default=str))
    log.info(
        f"Reproductions of trial {best.number} over seeds {' '.join(map(str, seeds))}: "
        f"testing/{setup.metric} {mean:.4f} ± {(high - low) / 2:.4f} (95% t-interval [{low:.4f}, {high:.4f}])"
    )
    return result


# ---- entry point -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Run one worker of a study; returns what it did (for tests and scripts)."""
    optuna.logging.disable_default_handler()  # Optuna's lines go through this project's logging
    optuna.logging.enable_propagation()
    setup = prepare(sys.argv[1:] if argv is None else argv)
    with quiet_optuna():
        study, storage, worker = open_study(setup)
        log.info(f"Study {setup.args.study} (worker {worker}): {setup.folder}")
        if setup.args.wandb_sweep:
            Path(setup.args.wandb_sweep).write_text(wandb_sweep(setup))
            log.info(f"W&B sweep configuration: {setup.args.wandb_sweep}")
        try:
            ran = search(setup, study, storage)
        except KeyboardInterrupt:
            close_bars()
            write_tables(setup, study)
            print(
                "error: interrupted; start the same tune.py command again to continue the study "
                "(the running trial continues from its last epoch)",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        except BaseException:
            write_tables(setup, study)  # the failed trial is in trials.csv too
            raise
        best = write_tables(setup, study)
        figures = write_figures(study, setup.folder, setup.args.objective)
        trials = study.get_trials(deepcopy=False)
        open_trials = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        done = sum(t.state in FINISHED for t in trials)
        log.info(
            f"Study {setup.args.study}: {done} of {setup.args.n_trials} trials finished"
            + (f", best trial {best['trial']}: {best['value']:.4f}" if best else "")
            + f"; outputs in {setup.folder}"
        )
        seeds = setup.args.reproduction_seeds or list(range(setup.args.reproductions))
        reproductions = None
        if seeds and best is not None and open_trials:
            log.info(
                f"Reproductions wait for trials {open_trials} of other workers; run tune.py again after them"
            )
        elif seeds and best is not None:
            reproductions = reproduce(setup, best_trial(study), seeds)
    return {
        "folder": setup.folder,
        "worker": worker,
        "ran": ran,
        "best": best,
        "figures": figures,
        "reproductions": reproductions,
    }


def cli() -> None:
    run_entry_point(main)


if __name__ == "__main__":
    cli()
