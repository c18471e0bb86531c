"""The evaluation flags, declared once for ``main.py`` and ``python -m evaluation``."""

from __future__ import annotations

import argparse

import metrics
from utilities.errors import ConfigError

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
    """argparse type of metric lists: an unknown metric fails at parse time, not after an epoch."""
    try:
        metrics.parse(name)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def add_evaluation_args(group: argparse._ArgumentGroup) -> None:
    """Which metrics, where and how they are computed (shared by every entry point)."""
    group.add_argument(
        "--evaluation_metrics",
        nargs="+",
        type=metric_name,
        default=DEFAULT_METRICS,
        help="metrics computed per split (<family>[@param], see metrics/)",
    )
    group.add_argument(
        "--eval_backend",
        default="auto",
        choices=["auto", "numba", "torch"],
        help="ranking-pass backend: auto = numba on CPU, torch on CUDA (same numbers, see metrics/ranking.py)",
    )
    group.add_argument(
        "--eval_chunk",
        type=int,
        default=0,
        help="query rows per distance block of the ranking pass (0: ~16 MB blocks)",
    )


def add_setup_args(group: argparse._ArgumentGroup) -> None:
    """Device and seed (shared by every entry point)."""
    group.add_argument("--seed", type=int, default=1, help="seed of everything random (k-means included)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument("--gpu", type=int, nargs="+", default=[0], help="CUDA device id (the first is used)")
