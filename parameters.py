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
import os
from pathlib import Path
from typing import Any

import architectures
import batch_mining
import criteria
import datasampler
import datasets
from evaluation.options import add_evaluation_args, add_setup_args, metric_name
from utilities import checkpoint
from utilities.cli import explicit_flags, stored_namespace
from utilities.errors import ConfigError


def basic_training_parameters(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cub200", help="dataset name (see the list below)")
    data.add_argument(
        "--source_path",
        default=os.path.join(os.getcwd(), "..", "..", "Datasets"),
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
        "--tv_split_perc", type=float, default=0.8, help="training fraction of the train/val split"
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
    train.add_argument("--lr", type=float, default=1e-5, help="learning rate of the network")
    train.add_argument(
        "--fc_lr",
        type=float,
        default=-1,
        help="if >= 0, separate learning rate of the embedding head (last_linear)",
    )
    train.add_argument("--decay", type=float, default=4e-4, help="weight decay of the network")
    train.add_argument("--n_epochs", type=int, default=150)
    train.add_argument("--kernels", type=int, default=6, help="DataLoader worker processes")
    train.add_argument("--bs", type=int, default=112, help="batch size")
    train.add_argument(
        "--scheduler",
        default="step",
        choices=["step", "cosine", "none"],
        help="step: MultiStepLR at --tau epochs; cosine; none",
    )
    train.add_argument("--gamma", type=float, default=0.3, help="MultiStepLR decay factor")
    train.add_argument("--tau", type=int, nargs="+", default=[1000], help="MultiStepLR milestones (epochs)")
    train.add_argument(
        "--optim", default="adam", choices=["adam", "adamw", "sgd"], help="SGD uses momentum 0.9"
    )

    plug = parser.add_argument_group("plugins")
    plug.add_argument("--loss", default="margin", help="criterion (criteria/)")
    plug.add_argument("--batch_mining", default="distance", help="batch miner (batch_mining/)")
    plug.add_argument("--data_sampler", default="class_random", help="batch sampler (datasampler/)")
    plug.add_argument("--samples_per_class", type=int, default=2, help="images per class in a batch")

    net = parser.add_argument_group("network")
    net.add_argument("--embed_dim", type=int, default=128, help="embedding dimension")
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

    ev = parser.add_argument_group("evaluation")
    add_evaluation_args(ev)
    ev.add_argument(
        "--storage_metrics",
        nargs="+",
        type=metric_name,
        default=["e_recall@1"],
        help="the first one selects the best epoch (on validation if present, else test)",
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
        default="group_plus_seed",
        help="run folder name; default: <group>_s<seed> with --log_online, else a timestamp",
    )
    setup.add_argument("--save_path", default=os.path.join(os.getcwd(), "Training_Results"))
    setup.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
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


def wandb_parameters(parser: argparse.ArgumentParser) -> None:
    wb = parser.add_argument_group("wandb", "the API key comes from WANDB_API_KEY or `wandb login`")
    wb.add_argument("--log_online", action="store_true", help="log to Weights & Biases")
    wb.add_argument("--project", default="Sample_Project", help="W&B project")
    wb.add_argument("--group", default="Sample_Group", help="W&B group; the seeds of one setup share it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Deep metric learning benchmark (Revisiting DML, ICML 2020, corrected).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    parser.epilog = f"backbones: {', '.join(architectures.REGISTRY.names())}"
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ---- --resume / --evaluate_only --------------------------------------------------------------------

# Runtime flags that may differ when a run is resumed; any other explicit flag would silently change
# the experiment and is refused.
RESUME_OVERRIDABLE = {
    "resume",
    "device",
    "gpu",
    "no_progress",
    "n_epochs",
    "log_online",
    "evaluate_on_gpu",
    "kernels",
}
# Flags that describe the process, not the experiment: never restored from a stored run.
NOT_RESTORED = {"resume", "evaluate_only", "checkpoint"}


def parse_run(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """Parse the command line; with ``--resume`` / ``--evaluate_only`` also load the stored run's
    arguments and checkpoint. Returns ``(opt, state)``; ``state`` is None for a fresh run."""
    parser = build_parser()
    opt = parser.parse_args(argv)
    if opt.resume and opt.evaluate_only:
        raise ConfigError("--resume and --evaluate_only exclude each other")
    if opt.resume:
        return _resume_namespace(parser, argv, opt)
    if opt.evaluate_only:
        return _evaluate_namespace(parser, argv, opt)
    return opt, None


def _resume_namespace(
    parser: argparse.ArgumentParser, argv: list[str] | None, opt: argparse.Namespace
) -> tuple[argparse.Namespace, dict | None]:
    """For ``--resume FOLDER``: the stored run's namespace and its last checkpoint (or None)."""
    folder = Path(opt.resume)
    args_file = folder / "args.json"
    if not args_file.is_file():
        raise ConfigError(f"--resume {folder}: not a run folder (no args.json in it)")
    explicit = explicit_flags(parser, argv)
    forbidden = sorted(set(explicit) - RESUME_OVERRIDABLE)
    if forbidden:
        raise ConfigError(
            "--resume continues a run with its stored configuration; these flags cannot be changed: "
            + ", ".join(f"--{k}" for k in forbidden)
            + f" (allowed: {', '.join('--' + k for k in sorted(RESUME_OVERRIDABLE - {'resume'}))})"
        )
    last = folder / "checkpoint_last.pt"
    state = _upgrade(checkpoint.load(last)) if last.is_file() else None
    stored = state["args"] if state is not None else json.loads(args_file.read_text())["args"]
    new = stored_namespace(opt, stored, explicit, NOT_RESTORED)
    new.resume = str(folder)
    return new, state


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
    if "model" not in state or "args" not in state:
        raise ConfigError(f"--checkpoint {path}: not a checkpoint written by main.py (no model/args)")
    explicit = explicit_flags(parser, argv)
    new = stored_namespace(opt, state["args"], explicit, NOT_RESTORED)
    new.evaluate_only, new.checkpoint = True, str(path)
    if "savename" not in explicit:
        new.savename = f"{path.parent.name}_eval_{path.stem}"
    return new, state
