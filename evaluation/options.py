"""The evaluation flags, declared once for ``main.py`` and ``python -m evaluation``."""

from __future__ import annotations

import argparse

import metrics
from metrics.scores import SCORES
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


# The ranks of Recall@k that each benchmark's papers report; a dataset plugin names its own in a
# ``recall_at`` attribute (e.g. SOP 1 10 100 1000, In-Shop 1 10 20 30 40), and the study's R@1 2 4
# is the fallback.
STUDY_RECALL_AT = (1, 2, 4)


def metrics_for(recall_at: tuple[int, ...] | list[int] = STUDY_RECALL_AT) -> list[str]:
    """The default metric list with the study's Recall@1,2,4 replaced by the ranks ``recall_at``
    (used when ``--evaluation_metrics`` is not given)."""
    return [f"e_recall@{k}" for k in recall_at] + [
        m for m in DEFAULT_METRICS if not m.startswith("e_recall@")
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
        default=None,
        help="metrics computed per split (<family>[@param], see metrics/); default: the study's list "
        "with the Recall@k ranks the dataset's papers report: 1 2 4 8, online_products 1 10 100 1000, "
        "inshop 1 10 20 30 40, inaturalist 1 4 16 32 (saved embeddings of no known dataset: 1 2 4)",
    )
    group.add_argument(
        "--eval_backend",
        default="auto",
        choices=["auto", "numba", "torch", "faiss"],
        help="retrieval backend: auto = the exact ranking pass (numba on CPU, torch on CUDA); faiss = "
        "a faiss kNN search (exact with --eval_index flat; serves every metric but mAP and mrr)",
    )
    group.add_argument(
        "--eval_index",
        default="flat",
        choices=["flat", "ivf", "hnsw", "ivfpq"],
        help="faiss index (--eval_backend faiss): flat = exact; ivf, hnsw, ivfpq = approximate, "
        "reported with their search_recall@k against exact search",
    )
    group.add_argument("--eval_nlist", type=int, default=0, help="ivf/ivfpq cells (0: ~4·sqrt(gallery))")
    group.add_argument("--eval_nprobe", type=int, default=16, help="ivf/ivfpq cells visited per query")
    group.add_argument("--eval_hnsw_m", type=int, default=32, help="hnsw links per node (M)")
    group.add_argument("--eval_ef_search", type=int, default=128, help="hnsw search breadth (efSearch)")
    group.add_argument(
        "--eval_pq_m", type=int, default=0, help="ivfpq code size in sub-quantizers (0: ≤ 16 dividing D)"
    )
    group.add_argument(
        "--eval_recall_sample",
        type=int,
        default=1000,
        help="queries (seeded sample) on which an approximate index's recall against exact search is measured",
    )
    group.add_argument(
        "--eval_kmeans",
        default="torch",
        choices=["torch", "faiss"],
        help="k-means for nmi/f1/ami: torch (same clusters on CPU and CUDA) or faiss (very large splits)",
    )
    group.add_argument(
        "--retrieval_score",
        default="mean",
        choices=list(SCORES),
        help="what the retrieval metrics rank by: mean = the embeddings (squared Euclidean); mls = "
        "the mutual likelihood score of gaussian embeddings (PFE; ~10x slower on CPU); "
        "expected_cosine = E[cos] of vmf embeddings (see metrics/scores.py)",
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
    group.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: the first --gpu if CUDA is available, else the CPU",
    )
    group.add_argument("--gpu", type=int, nargs="+", default=[0], help="CUDA device id (the first is used)")


def index_params(opt: argparse.Namespace) -> dict[str, int]:
    """The faiss index parameters that were set (0 = the index's own default)."""
    params = {
        "nlist": opt.eval_nlist,
        "nprobe": opt.eval_nprobe,
        "M": opt.eval_hnsw_m,
        "efSearch": opt.eval_ef_search,
        "m": opt.eval_pq_m,
    }
    return {k: v for k, v in params.items() if v}


def search_options(opt: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`metrics.compute` that come from the evaluation flags."""
    return {
        "backend": opt.eval_backend,
        "chunk": opt.eval_chunk or None,
        "index": opt.eval_index,
        "index_params": index_params(opt),
        "recall_sample": opt.eval_recall_sample,
        "kmeans": opt.eval_kmeans,
        "score": opt.retrieval_score,
    }
