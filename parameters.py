"""The command line: global flag groups here, plugin flags contributed by the registries.

Flag names and defaults follow the reference study (``--loss``, ``--batch_mining``, ``--bs``,
``--loss_margin_beta``, ...), so its command lines run unchanged; ``--source`` still works as an
abbreviation of ``--source_path``. Plugins declare their own hyperparameters next to their code
(a dataclass per plugin, see ``utilities/registry.py``); each registry adds one argument group per
plugin, so ``python main.py --help`` lists them grouped.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_METRICS = [  # the study's default list (mAP variants fixed, see metrics/) + MAP@R family
    "e_recall@1",
    "e_recall@2",
    "e_recall@4",
    "nmi",
    "f1",
    "mAP_1000",
    "mAP_lim",
    "mAP_c",
    "dists@intra",
    "dists@inter",
    "dists@intra_over_inter",
    "rho_spectrum@0",
    "rho_spectrum@-1",
    "rho_spectrum@1",
    "rho_spectrum@2",
    "rho_spectrum@10",
    "mAP@R",
    "r_precision",
    "precision@1",
]


def metric_name(name: str) -> str:
    """argparse type of --evaluation_metrics: an unknown metric fails at parse time, not after an epoch."""
    import metrics
    from utilities.errors import ConfigError

    try:
        metrics.parse(name)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


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
    train.add_argument("--seed", type=int, default=1)
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
    ev.add_argument(
        "--evaluation_metrics",
        nargs="+",
        type=metric_name,
        default=DEFAULT_METRICS,
        help="metrics computed per split (<family>[@param], see metrics/)",
    )
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
    ev.add_argument(
        "--eval_backend",
        default="auto",
        choices=["auto", "numba", "torch"],
        help="ranking-pass backend: auto = numba on CPU, torch on CUDA (same numbers, see metrics/ranking.py)",
    )
    ev.add_argument(
        "--eval_chunk",
        type=int,
        default=0,
        help="query rows per distance block of the ranking pass (0: ~16 MB blocks)",
    )

    setup = parser.add_argument_group("setup")
    setup.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    setup.add_argument("--gpu", type=int, nargs="+", default=[0], help="CUDA device id (the first is used)")
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
    import architectures
    import batch_mining
    import criteria
    import datasampler
    import datasets

    parser = argparse.ArgumentParser(
        description="Deep metric learning benchmark (Revisiting DML, ICML 2020, corrected).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    basic_training_parameters(parser)
    wandb_parameters(parser)
    for registry in (criteria.REGISTRY, batch_mining.REGISTRY, datasampler.REGISTRY, datasets.REGISTRY):
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
