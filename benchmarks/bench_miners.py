"""Median time per call of every batch miner (and, with --samplers, per batch of every sampler).

    .venv/bin/python benchmarks/bench_miners.py [--threads N] [--repeats R] [--samplers]

Miners: B = 112 L2-normalised 128-D embeddings, as 56 classes × 2 and 28 classes × 4, next to the
nearest pytorch-metric-learning (PML) miner where one exists, measured in the same run.
PML counterparts: BatchHardMiner and MultiSimilarityMiner compute the same tuples;
DistanceWeightedMiner the same weights (one negative per anchor and positive); TripletMarginMiner
enumerates *all* semi-hard / hard triplets instead of sampling one per anchor, and
UniformHistogramMiner samples pairs by distance histogram rather than negatives per anchor, so those
three are analogues, not equivalents. Samplers: milliseconds per batch of 112 at SOP scale
(59,551 images, 11,318 classes; storage samplers with a 128-D memory).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batch_mining
import datasampler


def pml_counterparts() -> dict[str, tuple[str, object]]:
    from pytorch_metric_learning import miners

    dw = ("DistanceWeightedMiner", miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4))
    return {
        "batchhard": ("BatchHardMiner", miners.BatchHardMiner()),
        "multisimilarity": ("MultiSimilarityMiner", miners.MultiSimilarityMiner(epsilon=0.1)),
        "distance": dw,
        "rho_distance": dw,
        "random_distance": dw,
        "semihard": (
            "TripletMarginMiner(semihard)*",
            miners.TripletMarginMiner(0.2, type_of_triplets="semihard"),
        ),
        "softhard": ("TripletMarginMiner(hard)*", miners.TripletMarginMiner(0.2, type_of_triplets="hard")),
        "parametric": (
            "UniformHistogramMiner*",
            miners.UniformHistogramMiner(num_bins=30, pos_per_bin=2, neg_per_bin=2),
        ),
    }


def median_ms(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def bench_miners(repeats: int) -> None:
    pml = pml_counterparts()
    g = torch.Generator().manual_seed(0)
    print(
        f"{'miner':16s} {'classes×spc':>11s} {'ours ms':>8s}   {'PML counterpart':30s} {'PML ms':>8s} {'ours/PML':>8s}"
    )
    for name in batch_mining.REGISTRY.names():
        for n_cls, spc in ((56, 2), (28, 4)):
            x = torch.nn.functional.normalize(torch.randn(112, 128, generator=g), dim=1)
            y = torch.arange(n_cls).repeat_interleave(spc)
            miner = batch_mining.REGISTRY.get(name)(seed=0)
            ours = median_ms(lambda m=miner, x=x, y=y: m(x, y), repeats)
            if name in pml:
                label, ref = pml[name]
                theirs = median_ms(lambda r=ref, x=x, y=y: r(x, y), repeats)
                print(
                    f"{name:16s} {f'{n_cls}×{spc}':>11s} {ours:8.3f}   {label:30s} {theirs:8.3f} {ours / theirs:8.2f}"
                )
            else:
                print(f"{name:16s} {f'{n_cls}×{spc}':>11s} {ours:8.3f}   {'-':30s} {'-':>8s} {'-':>8s}")


def bench_samplers(n_batches: int) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(11318), torch.randint(2, 10, (11318,), generator=g))[:59551]
    memory = torch.nn.functional.normalize(torch.randn(len(labels), 128, generator=g), dim=1)
    print(f"\n{'sampler':20s} {'ms / batch':>10s} {'batches/epoch':>14s}")
    for name in datasampler.REGISTRY.names():
        sampler = datasampler.REGISTRY.get(name)(labels, bs=112, samples_per_class=2, seed=0)
        if sampler.requires_storage:
            sampler.init_storage(lambda: memory)
        t = time.perf_counter()
        it = iter(sampler)
        for _ in range(n_batches):
            next(it)
        print(f"{name:20s} {1000 * (time.perf_counter() - t) / n_batches:10.2f} {len(sampler):14d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--samplers", action="store_true", help="also time the batch samplers")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, B = 112, D = 128, median of {args.repeats}"
    )
    bench_miners(args.repeats)
    if args.samplers:
        bench_samplers(20)


if __name__ == "__main__":
    main()
