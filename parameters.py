"""The command line of ``main.py``: global flag groups here, plugin flags from the registries.

Flag names and defaults follow the reference study (``--loss``, ``--batch_mining``, ``--bs``,
``--loss_margin_beta``, ...), so its command lines run unchanged; a study command line's --source still works as an
abbreviation of ``--source_path``. Plugins declare their hyperparameters in their constructor's
signature (see ``utilities/registry.py``); each registry adds one argument group per plugin, so
``python main.py --help`` lists them grouped. The evaluation flags are shared with
``python -m evaluation`` (``evaluation/options.py``).

:func:`parse_run` also resolves ``--resume`` (the stored run's flags + its last checkpoint) and
``--evaluate_only`` (a checkpoint's run flags, explicit flags taking precedence).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

import architectures
import batch_mining
import criteria
import datasampler
import datasets
from evaluation.console import DEFAULT_CONSOLE_METRICS
from evaluation.options import add_evaluation_args, add_setup_args, metric_name, metrics_for
from utilities import checkpoint, distributed
from utilities.cli import HelpFormatter, explicit_flags, stored_namespace
from utilities.cli import ShortUsageParser as Parser
from utilities.errors import ConfigError
from utilities.logger import check_writable, probe_lock

# ---- argparse value types: a bad value is argparse's one error line, before anything runs ----------


def finite_float(text: str) -> float:
    """A float that is neither nan nor +-inf (every float flag, plugin flags included)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def fc_lr_value(text: str) -> float:
    """``--fc_lr``: a learning rate >= 0, or -1 for "no separate rate"."""
    value = finite_float(text)
    if value < 0 and value != -1:
        raise argparse.ArgumentTypeError(f"must be >= 0, or -1 for no separate rate; got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def _at_least(convert: Callable[[str], float], low: int, *, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: ``convert(text)``, refused below ``low`` (or at it, with ``strict``)."""

    def check(text: str) -> float:
        value = convert(text)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text!r}")
        return value

    return check


non_negative_float = _at_least(finite_float, 0)
positive_float = _at_least(finite_float, 0, strict=True)
positive_int = _at_least(_integer, 1)
non_negative_int = _at_least(_integer, 0)


def path_component(text: str) -> str:
    """A name used as one folder of the run's path (``--savename``, ``--group``): no separator, no
    ``..``, not empty, not absolute, so the run folder always lies inside ``--save_path``."""
    if not text or text in (".", "..") or any(c in text for c in "/\\\0") or os.path.isabs(text):
        raise argparse.ArgumentTypeError(
            f"must be a single folder name (no '/', '\\', '..', not empty), got {text!r}"
        )
    return text


def basic_training_parameters(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cub200", help="dataset name (see the list below)")
    data.add_argument(
        "--source_path",
        default=os.path.normpath(os.path.join(os.getcwd(), "..", "..", "Datasets")),
        help="parent folder of the datasets; <source_path>/<dataset> is read",
    )
    data.add_argument(
        "--use_tv_split",
        action="store_true",
        help="carve a validation split out of the training classes; select epochs on it",
    )
    data.add_argument(
        "--tv_split_by_samples",
        action="store_true",
        help="validation split by a fraction of the samples of each class, not by classes",
    )
    data.add_argument(
        "--tv_split_perc", type=finite_float, default=0.8, help="training fraction of the train/val split"
    )
    data.add_argument(
        "--cv_folds",
        type=non_negative_int,
        default=0,
        help="K > 1: split the training classes into K class-disjoint folds, train on K-1 and select "
        "epochs on fold --cv_fold (the test split is untouched); 0 or 1: off; excludes --use_tv_split",
    )
    data.add_argument(
        "--cv_fold", type=non_negative_int, default=0, help="the validation fold of --cv_folds (0..K-1)"
    )
    data.add_argument(
        "--cv_scheme",
        default="random",
        choices=["random", "mlrc"],
        help="random: seeded by --seed (SOP: within each super-class); mlrc: the folds of A Metric "
        "Learning Reality Check (class order, its rounding and fold order)",
    )
    data.add_argument(
        "--augmentation",
        default="base",
        choices=["base", "adv", "big", "red"],
        help="training augmentation (see datasets/)",
    )
    data.add_argument(
        "--data_cache",
        default="",
        help="folder for a pre-resized uint8 image cache, built once and reused by every run",
    )
    data.add_argument(
        "--data_cache_size",
        type=int,
        default=256,
        help="shorter image side stored in the --data_cache (>= the evaluation resize)",
    )
    data.add_argument(
        "--data_decode",
        default="reduced",
        choices=["reduced", "full"],
        help="reduced: decode JPEGs at 1/2, 1/4 or 1/8 size when the crop is still downscaled",
    )

    train = parser.add_argument_group("optimisation")
    train.add_argument("--lr", type=non_negative_float, default=1e-5, help="learning rate of the network")
    train.add_argument(
        "--fc_lr",
        type=fc_lr_value,
        default=-1,
        help="if >= 0, separate learning rate of the embedding head (last_linear); -1: off",
    )
    train.add_argument("--decay", type=non_negative_float, default=4e-4, help="weight decay of the network")
    train.add_argument("--n_epochs", type=positive_int, default=150, help="training epochs")
    train.add_argument("--kernels", type=non_negative_int, default=6, help="DataLoader worker processes")
    train.add_argument("--bs", type=positive_int, default=112, help="batch size")
    train.add_argument(
        "--scheduler",
        default="step",
        choices=["step", "cosine", "none"],
        help="step: MultiStepLR at --tau epochs; cosine; none",
    )
    train.add_argument("--gamma", type=finite_float, default=0.3, help="MultiStepLR decay factor")
    train.add_argument("--tau", type=int, nargs="+", default=[1000], help="MultiStepLR milestones (epochs)")
    train.add_argument(
        "--optim", default="adam", choices=["adam", "adamw", "sgd"], help="SGD uses momentum 0.9"
    )

    par = parser.add_argument_group("distributed (under torchrun; --bs stays the global batch)")
    par.add_argument(
        "--dist_backend",
        default="auto",
        choices=["auto", "nccl", "gloo"],
        help="process-group backend; auto: nccl for CUDA, gloo for CPU processes",
    )
    par.add_argument(
        "--dist_timeout",
        type=positive_float,
        default=600.0,
        help="seconds a collective waits for the other ranks before the run fails (a dead rank)",
    )
    par.add_argument(
        "--sync_bn",
        action="store_true",
        help="BatchNorm statistics over the global batch (SyncBatchNorm, CUDA); without it each "
        "rank normalises with its own slice's statistics",
    )

    plug = parser.add_argument_group("plugins")
    plug.add_argument("--loss", default="margin", help="criterion (criteria/)")
    plug.add_argument("--batch_mining", default="distance", help="batch miner (batch_mining/)")
    plug.add_argument("--data_sampler", default="class_random", help="batch sampler (datasampler/)")
    plug.add_argument("--samples_per_class", type=positive_int, default=2, help="images per class in a batch")

    net = parser.add_argument_group("network")
    net.add_argument("--embed_dim", type=positive_int, default=128, help="embedding dimension")
    net.add_argument("--not_pretrained", action="store_true", help="random instead of ImageNet weights")
    net.add_argument(
        "--arch",
        default="resnet50_frozen_normalize",
        help="<backbone>[_frozen][_normalize][_double][_he], or timm:<model>[...] (architectures/)",
    )
    net.add_argument(
        "--pretrained_path",
        default="",
        help="local state dict with the backbone's pretrained weights (offline machines)",
    )
    net.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        default="off",
        choices=["off", "auto", "bf16", "fp16"],
        help="mixed precision (autocast); bare --amp = bf16 where supported, else fp16 (CUDA)",
    )
    net.add_argument("--channels_last", action="store_true", help="NHWC memory format for the backbone")
    net.add_argument(
        "--embedding_distribution",
        default="auto",
        choices=["auto", *architectures.DISTRIBUTIONS],
        help="what the network emits per image: a point (dirac) or a gaussian / vmf distribution "
        "(architectures/heads.py); auto: the one --loss trains (recorded resolved in args.json)",
    )

    ev = parser.add_argument_group("evaluation")
    add_evaluation_args(ev)
    ev.add_argument(
        "--storage_metrics",
        nargs="+",
        type=metric_name,
        default=["e_recall@1"],
        help="the first one selects the best epoch (on validation if present, else test); the "
        "others break its ties in order (a full tie keeps the earliest epoch)",
    )
    ev.add_argument(
        "--evaluate_on_gpu", action="store_true", help="compute the metrics on the training device"
    )
    ev.add_argument("--no_train_metrics", action="store_true", help="do not evaluate the training split")
    ev.add_argument(
        "--train_eval_every",
        type=int,
        default=1,
        help="evaluate the training split only every k epochs (and at the last epoch)",
    )
    ev.add_argument(
        "--save_embeddings",
        action="store_true",
        help="write <run>/embeddings_<split>.npz at every evaluation (for python -m evaluation)",
    )

    setup = parser.add_argument_group("setup")
    add_setup_args(setup)
    setup.add_argument(
        "--savename",
        type=path_component,
        default="group_plus_seed",
        help="run folder name; default: <group>_s<seed> with --log_online, else a timestamp",
    )
    setup.add_argument(
        "--save_path",
        default=os.path.join(os.getcwd(), "Training_Results"),
        help="run folders go to <save_path>/<dataset>/<run name>",
    )
    setup.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress bar (none is drawn anyway when stderr is not a terminal)",
    )
    setup.add_argument(
        "--console_metrics",
        nargs="+",
        type=metric_name,
        default=DEFAULT_CONSOLE_METRICS,
        help="metrics of each split on the per-epoch console line (those computed; every metric "
        "goes to metrics.csv)",
    )
    setup.add_argument(
        "--resume",
        default="",
        metavar="RUN_FOLDER",
        help="continue this run folder from its checkpoint_last.pt, with its stored flags",
    )
    setup.add_argument(
        "--evaluate_only",
        action="store_true",
        help="evaluate --checkpoint on the dataset's splits without training",
    )
    setup.add_argument(
        "--checkpoint",
        default="",
        metavar="PATH",
        help="checkpoint_*.pt for --evaluate_only (its run's flags are used unless given)",
    )
    setup.add_argument(
        "--config",
        default="",
        metavar="FILE",
        help="start from a stored configuration: a run's args.json (or its folder) or a YAML/JSON "
        "mapping of flag names to values; flags given on the command line override it",
    )


def wandb_parameters(parser: argparse.ArgumentParser) -> None:
    wb = parser.add_argument_group("wandb", "the API key comes from WANDB_API_KEY or `wandb login`")
    wb.add_argument("--log_online", action="store_true", help="log to Weights & Biases")
    wb.add_argument("--project", default="Sample_Project", help="W&B project")
    wb.add_argument(
        "--group",
        type=path_component,
        default="Sample_Group",
        help="W&B group; the seeds of one setup share it",
    )
    wb.add_argument(
        "--wandb_timeout",
        type=positive_float,
        default=10.0,
        help="seconds to wait for the W&B server at start; then the run logs locally only",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="main.py",
        description="Deep metric learning benchmark (Revisiting DML, ICML 2020, corrected).",
        formatter_class=HelpFormatter,
    )
    basic_training_parameters(parser)
    wandb_parameters(parser)
    for registry in (
        criteria.REGISTRY,
        criteria.WRAPPERS,
        batch_mining.REGISTRY,
        datasampler.REGISTRY,
        datasets.REGISTRY,
        architectures.REGISTRY,
    ):
        registry.add_args(parser)
    choices = {
        "loss": criteria.REGISTRY,
        "batch_mining": batch_mining.REGISTRY,
        "data_sampler": datasampler.REGISTRY,
        "dataset": datasets.REGISTRY,
    }
    for action in parser._actions:
        if action.dest in choices:
            action.help += f"; one of: {', '.join(choices[action.dest].names())}"
        if action.type is float:  # plugin hyperparameters: nan / inf never make a run
            action.type = finite_float
    parser.epilog = f"backbones: {', '.join(architectures.REGISTRY.names())}"
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return with_presets(build_parser().parse_args(argv))


def check_plugin_names(opt: argparse.Namespace) -> None:
    """An unknown loss, miner, sampler or backbone is a one-line error when the command line is
    parsed, before any data is read or model built (argparse cannot list the choices up front:
    the registries accept composed names such as ``resnet50_frozen_normalize``)."""
    criteria.REGISTRY.get(opt.loss)
    batch_mining.REGISTRY.get(opt.batch_mining)
    datasampler.REGISTRY.get(opt.data_sampler)
    architectures.check_arch(opt.arch)


def with_presets(opt: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other flags (recorded resolved in args.json): without
    ``--evaluation_metrics``, the study's metric list with the Recall@k ranks of ``--dataset``;
    ``--embedding_distribution auto``, the distribution ``--loss`` trains."""
    if opt.evaluation_metrics is None:
        opt.evaluation_metrics = metrics_for(datasets.recall_at(opt.dataset))
    return resolve_distribution(opt)


def resolve_distribution(opt: argparse.Namespace) -> argparse.Namespace:
    """``--embedding_distribution``: ``auto`` becomes what ``--loss`` trains (``criteria.distribution``;
    a stored run from before the flag existed reads ``auto`` too); an explicit value must be that
    one (a point loss cannot train a distribution head, nor a probabilistic loss a point)."""
    needed = criteria.distribution(opt.loss)
    given = getattr(opt, "embedding_distribution", "auto")
    if given not in ("auto", needed):
        kind = "point (dirac)" if needed == "dirac" else needed
        raise ConfigError(
            f"loss '{opt.loss}' trains a {kind} embedding; drop --embedding_distribution {given} "
            f"or use --embedding_distribution {needed}"
        )
    opt.embedding_distribution = needed
    return opt


# ---- --resume / --evaluate_only --------------------------------------------------------------------

# Runtime flags that may differ when a run is resumed; any other explicit flag must equal the
# stored value (re-running the original command with --resume works), else it would silently change
# the experiment and is refused.
RESUME_OVERRIDABLE = {
    "resume",
    "device",
    "gpu",
    "no_progress",
    "console_metrics",
    "n_epochs",
    "log_online",
    "evaluate_on_gpu",
    "kernels",
    "wandb_timeout",
    "dist_backend",
    "dist_timeout",
}
# Flags that describe the process, not the experiment: never restored from a stored run.
NOT_RESTORED = {"resume", "evaluate_only", "checkpoint"}
# What main.py puts into every checkpoint besides the parts' states.
CHECKPOINT_KEYS = ("args", "epoch", "rows", "history", "best_epoch", "wall_time", "model")


def parse_run(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """Parse the command line; with ``--resume`` / ``--evaluate_only`` also load the stored run's
    arguments and checkpoint. Returns ``(opt, state)``; ``state`` is None for a fresh run.

    Everything that can be checked without data is checked here, before anything is written: flag
    values (argparse types), a stored run's files, flags that differ from the stored ones, that the
    run folder is free (not locked by another process) and that the results can be written."""
    parser = build_parser()
    opt = parser.parse_args(argv)
    if opt.config:
        if opt.resume:
            raise ConfigError(
                "--config and --resume exclude each other (--resume uses the run's stored flags)"
            )
        argv = [*config_argv(parser, opt.config), *(sys.argv[1:] if argv is None else argv)]
        opt = parser.parse_args(argv)
    if not (opt.resume or opt.evaluate_only):  # those take the stored run's list
        opt = with_presets(opt)
        check_plugin_names(opt)
    if opt.resume and opt.evaluate_only:
        raise ConfigError("--resume and --evaluate_only exclude each other")
    if opt.resume:
        return _resume_namespace(parser, argv, opt)
    if opt.evaluate_only:
        new, state = _evaluate_namespace(parser, argv, opt)
    else:
        new, state = opt, None
    check_writable(Path(new.save_path) / new.dataset)
    return new, state


# args.json keys that record the process, not the experiment: a --config file never sets them.
# embedding_distribution is recorded resolved from --loss: replayed, it would refuse a --loss
# given after the --config (it always follows the loss anyway).
CONFIG_SKIPPED = NOT_RESTORED | {"config", "world_size", "process_group", "embedding_distribution"}


def config_argv(parser: argparse.ArgumentParser, source: str) -> list[str]:
    """The command-line tokens that set the flags stored in ``source`` (an args.json, a run folder
    holding one, or a YAML/JSON mapping ``flag: value``). Going through the parser again checks
    every value as if typed; flags after these tokens override them. A key that is not a flag of
    this version is an error (the run could not be reproduced as stored)."""
    path = Path(source)
    path = path / "args.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: cannot read it: {str(err).splitlines()[0]}") from None
    if isinstance(data, dict) and isinstance(data.get("args"), dict):  # a run's args.json
        data = data["args"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    keys = {str(k): str(k).lstrip("-").replace("-", "_") for k in data}
    unknown = [k for k, dest in keys.items() if dest not in actions and dest not in CONFIG_SKIPPED]
    if unknown:
        raise ConfigError(f"--config {path}: not flags of this main.py: {', '.join(sorted(unknown))}")
    tokens: list[str] = []
    for key, value in data.items():
        dest = keys[str(key)]
        if dest in CONFIG_SKIPPED or value is None:
            continue
        action = actions[dest]
        flag = f"--{dest}" if f"--{dest}" in action.option_strings else action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ConfigError(f"--config {path}: {key} is a switch; give true or false, not {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                tokens += [f"--{dest}" if value else f"--no-{dest}"]
            else:
                tokens += [flag] if value else []
        elif isinstance(value, list):
            tokens += [flag, *map(str, value)] if value else []
        elif isinstance(value, dict | bool):
            raise ConfigError(f"--config {path}: {key}: {value!r} is not a value of {flag}")
        else:
            tokens += [flag, str(value)]
    return tokens


def _resume_namespace(
    parser: argparse.ArgumentParser, argv: list[str] | None, opt: argparse.Namespace
) -> tuple[argparse.Namespace, dict | None]:
    """For ``--resume FOLDER``: the stored run's namespace and its last checkpoint (or None)."""
    folder = Path(opt.resume)
    args_file = folder / "args.json"
    if not args_file.is_file():
        raise ConfigError(f"--resume {folder}: not a run folder (no args.json in it)")
    stored = _read_args_json(args_file)
    last, best = folder / "checkpoint_last.pt", folder / "checkpoint_best.pt"
    state = _upgrade(_read_last_checkpoint(last, best)) if last.is_file() else None
    if state is not None:
        stored = state["args"]
    explicit = explicit_flags(parser, argv)
    _refuse_changed_flags(parser, explicit, stored)
    new = stored_namespace(opt, stored, explicit, NOT_RESTORED)
    new.resume = str(folder)
    resolve_distribution(new)
    if state is not None and new.n_epochs <= state["epoch"]:
        raise ConfigError(
            f"--resume {folder}: run already has {state['epoch'] + 1} epochs; --n_epochs must be larger "
            f"to extend it (given {new.n_epochs})"
        )
    if distributed.environment().is_main:  # under torchrun rank 0 may already hold the lock
        probe_lock(folder)
    check_writable(folder, "--resume")
    return new, state


def _read_args_json(path: Path) -> dict[str, Any]:
    """The ``args`` of a run folder's args.json; a damaged file is one line naming it."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--resume: cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(info, dict) or not isinstance(info.get("args"), dict):
        raise ConfigError(f"--resume: cannot read {path}: no 'args' object in it")
    return info["args"]


def _read_last_checkpoint(last: Path, best: Path) -> dict[str, Any]:
    """checkpoint_last.pt of a run folder; if it is damaged the error says whether
    checkpoint_best.pt can take its place."""
    if best.is_file():
        hint = f"; {best.name} exists: copy it to {last} to resume from the best epoch"
    else:
        hint = f"; delete it to restart the run from epoch 0 ({best.name} does not exist)"
    try:
        state = checkpoint.load(last)
    except ConfigError as err:
        raise ConfigError(f"--resume: {err}{hint}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"--resume: {last} is not a checkpoint written by main.py (no {missing[0]}){hint}")
    return state


def _refuse_changed_flags(
    parser: argparse.ArgumentParser, explicit: dict[str, Any], stored: dict[str, Any]
) -> None:
    """Explicit flags of a --resume must equal the stored ones (runtime flags excepted)."""
    changed = []
    for key in sorted(set(explicit) - RESUME_OVERRIDABLE):
        before = stored.get(key, parser.get_default(key))  # a flag added later: its default
        if not _same(before, explicit[key]):
            changed.append(f"--{key}: stored {_show(before)}, given {_show(explicit[key])}")
    if changed:
        raise ConfigError(
            "--resume continues a run with its stored configuration; these flags differ from it: "
            + "; ".join(changed)
            + f" (changeable: {', '.join('--' + k for k in sorted(RESUME_OVERRIDABLE - {'resume'}))})"
        )


def _same(a: Any, b: Any) -> bool:
    """Equal as flag values: lists element-wise (JSON stores tuples as lists), 1e-3 == 0.001."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value)
    if value == "":
        return "''"
    return str(value)


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint from before the batch miner moved into the criterion kept the miner's
    generator states under ``miner``; they now live in the criterion's state dict (inside the
    cross-batch memory wrapper's ``criterion`` when ``--xbm_size`` was set)."""
    miner = state.pop("miner", None)
    if miner:
        prefix = "criterion." if state["args"].get("xbm_size", 0) > 0 else ""
        state["criterion"][f"{prefix}batchminer._extra_state"] = miner
    return state


def _evaluate_namespace(
    parser: argparse.ArgumentParser, argv: list[str] | None, opt: argparse.Namespace
) -> tuple[argparse.Namespace, dict]:
    """For ``--evaluate_only --checkpoint PATH``: the checkpoint's run arguments, any explicit flag
    (e.g. ``--source_path``, ``--evaluation_metrics``, ``--save_path``) taking precedence."""
    if not opt.checkpoint:
        raise ConfigError("--evaluate_only needs --checkpoint PATH (a checkpoint_*.pt of a run)")
    path = Path(opt.checkpoint)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {path}: no such file")
    state = checkpoint.load(path)
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("args"), dict):
        raise ConfigError(f"--checkpoint {path}: not a checkpoint written by main.py (no model/args)")
    explicit = explicit_flags(parser, argv)
    new = stored_namespace(opt, state["args"], explicit, NOT_RESTORED)
    new.evaluate_only, new.checkpoint = True, str(path)
    resolve_distribution(new)
    if "savename" not in explicit:
        new.savename = f"{path.parent.name}_eval_{path.stem}"
    return new, state
