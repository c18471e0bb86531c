"""Median forward+backward time of every criterion, next to its pytorch-metric-learning counterpart.

    .venv/bin/python benchmarks/bench_losses.py [--threads 2] [--repeats 30] [--big-repeats 10]

Batch: B = 112 L2-normalised 128-D embeddings, as 56 classes × 2 and 28 classes × 4 (for the
probabilistic losses, with their log-variances or log-concentration packed after them). Criteria that
consume tuples run with their default miner (triplets: ``distance``, the study's default;
``npair``/``lifted``: the miners of the same name). Losses with class weights or proxies use
C = 100 classes (CUB/CARS-sized) and, in a second block, C = 11,318 (SOP's training classes).

Columns (medians): ``ours+miner`` is what a training step pays (mining + loss + backward); ``ours
loss`` is the loss alone on the same pre-mined tuples that the PML counterpart receives (for losses
without a miner the two are the same call); ``ratio`` = ours loss / PML; ``min ratio`` is the same
ratio of the fastest calls, which is robust to a busy machine. PML counterparts marked * compute a
different formula (named in the note column) and are analogues, not equivalents; "-" means PML has
no such loss. All timings come from one process on this machine, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batch_mining
import criteria

DEFAULT_MINER = {"triplets": "distance", "npair": "npair", "lifted": "lifted"}


class Fixed:
    """A miner that returns pre-mined tuples (so ours and PML see the same ones)."""

    name = "fixed"

    def __init__(self, kind, tuples):
        self.tuple_kind, self.tuples = kind, tuples

    def __call__(self, batch, labels):
        return self.tuples


class _Sum:
    """Two PML losses called with the same arguments, summed (our angular = N-pair + angular)."""

    def __init__(self, *parts):
        self.parts = parts

    def __call__(self, *args):
        return sum(part(*args) for part in self.parts)


def pml_counterpart(name: str, n_classes: int, dim: int):
    """(label, callable(x, labels, tuples) -> loss) or None."""
    from pytorch_metric_learning import distances, losses, miners, reducers, regularizers

    lp = distances.LpDistance(normalize_embeddings=False)
    C, D = n_classes, dim
    table = {
        "triplet": (
            "TripletMarginLoss",
            losses.TripletMarginLoss(
                margin=0.2,
                distance=distances.LpDistance(power=2, normalize_embeddings=False),
                reducer=reducers.MeanReducer(),
            ),
            "triplets",
        ),
        "margin": (
            "MarginLoss*",
            losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=True, num_classes=C),
            "triplets",
        ),
        "contrastive": (
            "ContrastiveLoss",
            losses.ContrastiveLoss(distance=lp, reducer=reducers.MeanReducer()),
            "pairs",
        ),
        "snr": (
            "TripletMarginLoss(SNRDistance)",
            losses.TripletMarginLoss(
                margin=0.2,
                distance=distances.SNRDistance(normalize_embeddings=False),
                reducer=reducers.AvgNonZeroReducer(),
                embedding_regularizer=regularizers.ZeroMeanRegularizer(),
                embedding_reg_weight=0.005,
            ),
            "triplets",
        ),
        "npair": ("NPairsLoss*", losses.NPairsLoss(), "npair"),
        "angular": (
            "AngularLoss+NPairsLoss*",
            _Sum(losses.AngularLoss(alpha=45), losses.NPairsLoss()),
            "npair",
        ),
        "lifted": (
            "GeneralizedLiftedStructureLoss",
            losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, distance=lp),
            None,
        ),
        "histogram": ("HistogramLoss", losses.HistogramLoss(n_bins=64), None),
        "circle": ("CircleLoss", losses.CircleLoss(m=0.4, gamma=80), None),
        "supcon": ("SupConLoss", losses.SupConLoss(temperature=0.1), None),
        "fastap": ("FastAPLoss", losses.FastAPLoss(num_bins=10), None),
        "proxynca": ("ProxyNCALoss*", losses.ProxyNCALoss(C, D, softmax_scale=9.0), None),
        "proxyanchor": ("ProxyAnchorLoss", losses.ProxyAnchorLoss(C, D, margin=0.1, alpha=32), None),
        "softmax": ("NormalizedSoftmaxLoss", losses.NormalizedSoftmaxLoss(C, D, temperature=0.05), None),
        "softtriplet": ("SoftTripleLoss", losses.SoftTripleLoss(C, D, centers_per_class=2, la=8.0), None),
        "arcface": ("ArcFaceLoss", losses.ArcFaceLoss(C, D, margin=math.degrees(0.5), scale=16), None),
        "cosface": ("CosFaceLoss", losses.CosFaceLoss(C, D, margin=0.35, scale=64), None),
        "sphereface": ("SphereFaceLoss", losses.SphereFaceLoss(C, D, margin=4, scale=1), None),
        "subcenter_arcface": (
            "SubCenterArcFaceLoss",
            losses.SubCenterArcFaceLoss(
                num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64, sub_centers=3
            ),
            None,
        ),
    }
    if name == "multisimilarity":
        ms_miner, ms_loss = miners.MultiSimilarityMiner(epsilon=0.1), losses.MultiSimilarityLoss(2, 40, 0.5)
        return "MultiSimilarityMiner+Loss", lambda x, y, t: ms_loss(x, y, ms_miner(x, y))
    if name not in table:
        return None
    label, loss, fmt = table[name]

    def call(x, y, tuples):
        if fmt == "triplets":
            return loss(x, y, tuples)
        if fmt == "pairs":
            a, p, n = tuples
            return loss(x, y, (a, p, a, n))
        if fmt == "npair":
            anchors, positives = tuples[0], tuples[1]
            neg = torch.nonzero(y != y[anchors[0]])[:1, 0]
            return loss(x, y, (anchors, positives, anchors[:1], neg))
        return loss(x, y)

    return label, call


def median_ms(fns: list, repeats: int, warmup: int = 3) -> list[tuple[float, float]]:
    """(median, min) milliseconds of each callable, measured round-robin so that all of them see
    the same background load (the machine is shared; the min is the least disturbed call)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t)
    return [(1000.0 * statistics.median(b), 1000.0 * min(b)) for b in times]


def fwd_bwd(loss_fn, x, y, *extra):
    def step():
        x.grad = None
        loss_fn(x, y, *extra).backward()

    return step


def build(name: str, n_classes: int, miner):
    given = {"n_classes": n_classes, "embed_dim": 128, "lr": 1e-5, "batchminer": miner, "seed": 0}
    return criteria.REGISTRY.get(name)(**{k: given[k] for k in criteria.REGISTRY.context(name)})


def network_output(name: str, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What the network hands loss ``name`` for the points ``x``: ``x`` itself, or a distribution
    packed after it (log σ² per dimension, or log κ), as ``--embedding_distribution`` heads emit."""
    kind = criteria.distribution(name)
    if kind == "gaussian":
        return torch.cat([x, torch.randn(x.shape, generator=g) - 2.0], dim=1)
    if kind == "vmf":
        return torch.cat([x, math.log(50.0) + 0.3 * torch.randn(len(x), 1, generator=g)], dim=1)
    return x


def run(names, n_classes_for_proxies: int, configs, repeats: int, g: torch.Generator) -> list[tuple]:
    rows = []
    for name in names:
        cls = criteria.REGISTRY.get(name)
        has_classes = "n_classes" in criteria.REGISTRY.context(name)
        for n_cls, spc in configs:
            classes = torch.randperm(max(n_classes_for_proxies, n_cls), generator=g)[:n_cls]
            y = classes.repeat_interleave(spc)
            x = network_output(
                name, torch.nn.functional.normalize(torch.randn(n_cls * spc, 128, generator=g), dim=1), g
            ).requires_grad_()
            miner_name, tuples = "-", None
            fns = []
            if not cls.requires_miner:
                ours = build(name, n_classes_for_proxies, None)
            else:
                miner_name = DEFAULT_MINER[cls.tuple_kinds[0]]
                miner = batch_mining.REGISTRY.get(miner_name)(seed=0)
                fns.append(fwd_bwd(build(name, n_classes_for_proxies, miner), x, y))
                tuples = miner(x, y)
                ours = build(name, n_classes_for_proxies, Fixed(cls.tuple_kinds[0], tuples))
            fns.append(fwd_bwd(ours, x, y))
            counterpart = pml_counterpart(name, n_classes_for_proxies, 128)
            label = "-" if counterpart is None else counterpart[0]
            if counterpart is not None:
                fns.append(fwd_bwd(counterpart[1], x, y, tuples))
            times = median_ms(fns, repeats)
            total = times[0]
            loss_only = times[1] if cls.requires_miner else times[0]
            theirs = times[-1] if counterpart is not None else (float("nan"), float("nan"))
            rows.append(
                (
                    name,
                    miner_name,
                    f"{n_cls}×{spc}",
                    n_classes_for_proxies if has_classes else "-",
                    total,
                    loss_only,
                    label,
                    theirs,
                )
            )
    return rows


def print_table(rows) -> None:
    head = (
        f"{'loss':18s} {'miner':9s} {'batch':>6s} {'C':>6s} {'ours+miner':>10s} {'ours loss':>10s}   "
        f"{'PML counterpart':31s} {'PML ms':>8s} {'ratio':>6s} {'min ratio':>9s}"
    )
    print(head)
    print("-" * len(head))
    for name, miner, cfg, c, total, loss_only, label, theirs in rows:
        if theirs[0] == theirs[0]:
            pml_ms = f"{theirs[0]:8.2f}"
            ratios = f"{loss_only[0] / theirs[0]:6.2f} {loss_only[1] / theirs[1]:9.2f}"
        else:
            pml_ms, ratios = f"{'-':>8s}", f"{'-':>6s} {'-':>9s}"
        print(
            f"{name:18s} {miner:9s} {cfg:>6s} {c!s:>6s} {total[0]:10.2f} {loss_only[0]:10.2f}   "
            f"{label:31s} {pml_ms} {ratios}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--big-repeats", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="restrict to these losses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    names = args.only or criteria.REGISTRY.names()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, B = 112, D = 128, times in ms "
        f"(median of {args.repeats}; C = 11,318 rows: median of {args.big_repeats})\n"
    )
    rows = run(names, 100, [(56, 2), (28, 4)], args.repeats, g)
    proxy = [
        n
        for n in names
        if "n_classes" in criteria.REGISTRY.context(n) and not criteria.REGISTRY.get(n).requires_miner
    ]
    rows += run(proxy, 11318, [(56, 2)], args.big_repeats, g)
    print_table(rows)
    print(
        "\n* different formula: margin (PML averages its two terms over separate non-zero counts), npair "
        "(PML: one pair per class, CE over the other positives), angular (PML: AngularLoss + NPairsLoss, whose "
        "N-pair term uses one pair per class), proxynca (PML keeps the positive proxy in the denominator)."
    )


if __name__ == "__main__":
    main()
