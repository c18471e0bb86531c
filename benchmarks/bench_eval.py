"""Evaluation benchmark: the full metric set at CUB, CARS and SOP scale vs pytorch-metric-learning.

    .venv/bin/python benchmarks/bench_eval.py [--scales cub cars sop inat] [--threads 2] [--no_pml]
        [--contended [on|both]] [--probabilistic]

Seeded synthetic clustered embeddings (L2-normalised, like the ``_normalize`` architectures):

* CUB scale:  5,924 × 128, 100 classes (~59 per class);
* CARS scale: 8,131 × 128, 98 classes (~83 per class);
* SOP scale: 60,502 × 128, 11,316 classes of 2-12 samples;
* iNat scale (``--scales inat``, not in the default run): 136,093 × 128, 2,452 classes, the test
  split of the DML iNaturalist-2018 benchmark (Brown et al. 2020, Smooth-AP), with CUB's generator
  (balanced classes of 55-56; the real split is long-tailed).

``--contended`` runs the comparison with one pure-Python busy-loop process per core beside it
(``os.cpu_count()`` of them, stopped on exit, on Ctrl-C and if this process dies), as on a machine
shared with other jobs; ``--contended both`` measures every scale without and then with them, in
one session, side by side. Every row records the 1-minute load average before and after it. The
script sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it; ``OMP_WAIT_POLICY=``
keeps the runtime's spinning default) for both sides, before any OpenMP runtime loads: waiting
OpenMP threads then sleep instead of spinning on a core that a descheduled thread of the same
region needs (see ``metrics/_threads.py``).

With two or more scales a growth table follows: total and per-stage seconds and the peak extra
memory per scale, and the exponent of N (slope of the least-squares line through log N, log value,
plus the slope between consecutive scales: k-means depends on the class count too, which does not
grow with N between SOP and iNat).

Ours computes the study's default metric list (``evaluation.options.DEFAULT_METRICS``: e_recall@1,2,4,
nmi, f1, mAP_1000, mAP_lim, mAP_c, dists@*, rho_spectrum@0,-1,1,2,10) plus mAP@R, r_precision and
precision@1 (and e_recall@10,100,1000 at SOP scale); ``--metric_set superset`` adds everything
AccuracyCalculator computes that the list lacks (ami, mAP, mrr), so ours is a strict superset of
it; ``--metric_set pml`` times exactly its set. pytorch-metric-learning's
``AccuracyCalculator`` runs its default metrics (precision_at_1, r_precision, MAP@R, mean AP,
MRR, NMI, AMI) with ``k="max_bin_count"`` (its default ``k=None`` means k = N, an N×N result that
does not fit in memory at SOP scale) on the same data. Every measurement runs in a fresh process
(so ``ru_maxrss`` is that run's peak); "extra memory" = peak RSS − RSS with the data loaded.
Memory: every measurement runs in a fresh process; after the data is loaded and the warm-up has
run, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), and "extra MB" = peak RSS
during the timed runs (``VmHWM``) − RSS at their start: everything the evaluation allocates (torch
tensors, numpy arrays, the allocator's slack) as the OS sees it. Without ``clear_refs`` (not Linux)
it falls back to ``ru_maxrss``, which can hide an evaluation below an earlier peak.
Both sides first run once on a tiny input (one-time imports, kernel loading, thread pools), then
the median of ``--repeats`` timed runs is reported.
Prints a timing table (total and per stage) and the metric values side by side.

``--probabilistic`` instead measures what the uncertainty and verification metrics
(``PROBABILISTIC_METRICS``: ERC, confidence accuracy and histogram, ROC AUC, TPR@FPR, EER,
FNMR@FMR) add to the study metric set, per scale: one ``compute`` call with the study list followed
by them (seeded log-normal confidences), timed metric by metric through its ``progress`` callback,
so the study part and the added part come from the same run (the added metrics reuse its ranking
pass); their share of the total is the number to keep under 10 % at SOP scale.

``--sweep 200000 1000000`` instead runs the scale sweep beyond SOP: a clustered unit-norm gallery
of that size (classes of 10, near a 16-dimensional subspace: see ``sweep_data``) and
``--sweep_queries`` (10,000) queries, query/gallery protocol,
e_recall@1/@10, precision@1 and mAP@R with the exact ranking pass and with faiss (flat = exact,
ivf, hnsw, ivfpq with their default parameters): time, extra memory, the metrics and each
approximate index's ``search_recall@k`` against exact search.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# before torch, MKL, numba or faiss load an OpenMP runtime: it reads the policy once, at load.
# An empty OMP_WAIT_POLICY= measures the runtime's default (spinning) for comparison.
if os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE") == "":
    del os.environ["OMP_WAIT_POLICY"]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCALES = {
    "cub": {"n": 5924, "classes": 100, "sizes": None, "noise": 0.18},
    "cars": {"n": 8131, "classes": 98, "sizes": None, "noise": 0.18},
    "sop": {"n": 60502, "classes": 11316, "sizes": (2, 12), "noise": 0.12},
    "inat": {"n": 136093, "classes": 2452, "sizes": None, "noise": 0.18},
}
DEFAULT_SCALES = ["cub", "cars", "sop"]
FAISS_REFERENCE = True  # --no_faiss: skip the reference kNN search
DIM = 128


def make_data(scale: str, seed: int = 0):
    """Seeded clustered unit-norm embeddings and labels at one scale."""
    import numpy as np

    spec = SCALES[scale]
    rng = np.random.default_rng(seed)
    n, c = spec["n"], spec["classes"]
    if spec["sizes"] is None:
        labels = np.arange(n) % c
    else:
        lo, hi = spec["sizes"]
        # sizes spread over [lo, hi] like SOP's (mostly 2-8, a few up to 12), mean n / c
        sizes = np.clip(lo + rng.poisson(n / c - lo, c), lo, hi)
        while (diff := n - int(sizes.sum())) != 0:  # fix the total at random classes with room
            room = np.flatnonzero(sizes < hi) if diff > 0 else np.flatnonzero(sizes > lo)
            pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
            sizes[pick] += 1 if diff > 0 else -1
        labels = np.repeat(np.arange(c), sizes)
    labels = rng.permutation(labels)
    centres = rng.normal(size=(c, DIM)) / np.sqrt(DIM)
    # per-dimension noise around unit-scale class centres (R@1 roughly 0.8 at CUB scale)
    x = centres[labels] + spec["noise"] * rng.normal(size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux >= 4.0: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # peak_mb() then reports the process's lifetime peak


def peak_mb() -> float:
    """Peak RSS since the last :func:`reset_peak` (lifetime peak where there is no VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load() -> float:
    """The 1-minute load average (what ``uptime`` prints first)."""
    return os.getloadavg()[0]


def _spin(parent: int) -> None:  # pragma: no cover - runs in the busy-loop processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops these
    while os.getppid() == parent:  # the parent died (even by SIGKILL): stop within ~10 ms
        for _ in range(200_000):
            pass


@contextmanager
def contention(on: bool):
    """One busy-loop process per core while the block runs; yields how many."""
    if not on:
        yield 0
        return
    import multiprocessing

    procs = [
        multiprocessing.Process(target=_spin, args=(os.getpid(),), daemon=True)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        for p in procs:
            p.start()
        time.sleep(0.5)  # every spinner is running before the measurement starts
        yield len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


# pytorch-metric-learning's own metric set (what AccuracyCalculator computes), for a like-for-like row
PML_SET = ["precision@1", "r_precision", "mAP@R", "nmi", "ami", "mAP", "mrr"]
METRIC_SET = "study"  # set from --metric_set


def metric_names(scale: str) -> list[str]:
    """study: the study list (the study's defaults + the MAP@R family, + deep recalls at SOP);
    superset: that plus everything AccuracyCalculator computes (ami, mAP, mrr); pml: only the latter."""
    from evaluation.options import DEFAULT_METRICS

    if METRIC_SET == "pml":
        return list(PML_SET)
    names = list(DEFAULT_METRICS)
    if scale == "sop":
        names += ["e_recall@10", "e_recall@100", "e_recall@1000"]
    if METRIC_SET == "superset":
        names += [m for m in PML_SET if m not in names]
    return names


def run_ours(scale: str, threads: int, backend: str, repeats: int) -> dict:
    import faiss
    import torch

    import metrics
    from metrics import kmeans

    # one-time process costs outside the timer, as PML's side gets them: scikit-learn's import
    # (~2.6 s, used by `ami`) and loading the numba ranking kernel from its cache (~0.8 s; compiling
    # it, on the very first run after install, ~4 s)
    importlib.import_module("sklearn.metrics")
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    # 640² distances: large enough that `auto` takes (and so loads) the numba kernel
    warm = torch.nn.functional.normalize(torch.randn(640, 8), dim=1)
    metrics.compute(metric_names(scale), warm, torch.arange(640) % 8, seed=1, backend=backend)
    if backend != "torch":  # and the k-means kernel (~1 s), which 640 points are too few to take
        kmeans.nearest_two(warm, warm[:410], backend="numba")
    x, y = make_data(scale)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    reset_peak()
    base = rss_mb()
    runs = []
    for _ in range(repeats):
        timings: dict[str, float] = {}
        start, cpu = time.perf_counter(), time.process_time()
        values = metrics.compute(metric_names(scale), x, y, seed=1, backend=backend, timings=timings)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        stages = {k: round(v, 3) for k, v in timings.items()}
        stages["metrics"] = round(total - sum(timings.values()), 3)
        runs.append((total, stages, cpu))
    total, stages, cpu = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run
    values = {k: v for k, v in values.items() if not metrics.is_array(v)}
    extra_mb = peak_mb() - base  # before the faiss reference allocates its own results
    return {
        "total": total,
        "cpu": cpu,
        "stages": stages,
        "extra_mb": extra_mb,
        "values": values,
        "faiss_knn": faiss_reference(x, y, scale, repeats) if FAISS_REFERENCE else {},
    }


def faiss_reference(x, y, scale: str, repeats: int) -> dict[str, float]:
    """What the ranking pass replaces: faiss's exact kNN search (IndexFlatL2, all queries) at
    k = the largest class + 1 (enough for MAP@R) and, except at SOP/iNat scale, k = 1024 (mAP_lim)."""
    import faiss
    import numpy as np

    xn = np.ascontiguousarray(x.numpy())
    index = faiss.IndexFlatL2(xn.shape[1])
    index.add(xn)
    out = {}
    ks = [int(np.bincount(y.numpy()).max()) + 1] + ([] if scale in ("sop", "inat") else [1024])
    for k in ks:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            index.search(xn, k)
            times.append(time.perf_counter() - start)
        out[f"k={k}"] = sorted(times)[len(times) // 2]
    return out


# the metrics of probabilistic embeddings (issue 14): confidence-based and pair-based
PROBABILISTIC_METRICS = [
    "erc_recall@1",
    "erc_mAP@R",
    "confidence_accuracy",
    "confidence_hist",
    "roc_auc",
    "tpr@1e-2",
    "tpr@1e-3",
    "tpr@1e-4",
    "eer",
    "fnmr@1e-3",
]


def run_probabilistic(scale: str, threads: int, backend: str, repeats: int) -> dict:
    """Seconds of the study list and of PROBABILISTIC_METRICS after it, in one ``compute`` call."""
    import numpy as np
    import torch

    import metrics

    importlib.import_module("sklearn.metrics")  # as run_ours: one-time costs outside the timer
    torch.set_num_threads(threads)
    study = metric_names(scale)
    names = study + PROBABILISTIC_METRICS
    warm = torch.nn.functional.normalize(torch.randn(640, 8), dim=1)
    metrics.compute(names, warm, torch.arange(640) % 8, seed=1, backend=backend, confidence=torch.rand(640))
    x, y = make_data(scale)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    confidence = torch.from_numpy(np.random.default_rng(1).lognormal(size=len(y)))
    runs = []
    for _ in range(repeats):
        stamps: dict[str, float] = {}
        timings: dict[str, float] = {}
        start = time.perf_counter()
        metrics.compute(
            names,
            x,
            y,
            seed=1,
            backend=backend,
            confidence=confidence,
            timings=timings,
            progress=lambda name, into=stamps: into.setdefault(name, time.perf_counter()),
        )
        end = time.perf_counter()
        split = stamps[PROBABILISTIC_METRICS[0]]
        runs.append(
            {
                "study": split - start,
                "added": end - split,
                "verification": timings.get("verification", 0.0),
                "per_metric": {
                    name: (stamps[nxt] if nxt else end) - stamps[name]
                    for name, nxt in itertools.zip_longest(PROBABILISTIC_METRICS, PROBABILISTIC_METRICS[1:])
                },
            }
        )
    return sorted(runs, key=lambda r: r["study"] + r["added"])[len(runs) // 2]


def probabilistic(scales: list[str], threads: int, backend: str, repeats: int) -> None:
    rows = []
    for scale in scales:
        before = load()
        r = in_subprocess("prob", scale, threads, backend, repeats or (1 if scale in ("sop", "inat") else 3))
        rows.append((scale, r, before, load()))
        print(json.dumps({"scale": scale, **r}), flush=True)
    print(
        f"\nuncertainty + verification metrics after the study list: threads={threads}, backend={backend}, "
        f"D={DIM}; wall seconds of the median run; load = 1-minute load average"
    )
    print(
        "| scale | N | load before→after | study s | added s | added / study | verification stage s | slowest added |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scale, r, before, after in rows:
        slowest = max(r["per_metric"], key=r["per_metric"].get)
        print(
            f"| {scale} | {SCALES[scale]['n']:,} | {before:.1f}→{after:.1f} | {r['study']:.2f} | {r['added']:.2f} | "
            f"{100 * r['added'] / r['study']:.1f} % | {r['verification']:.2f} | "
            f"{slowest} {r['per_metric'][slowest]:.2f} |"
        )


def run_pml(scale: str, threads: int, repeats: int) -> dict:
    import faiss
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x, y = make_data(scale)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    calc = AccuracyCalculator(k="max_bin_count")
    warm = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    calc.get_accuracy(warm, torch.arange(64) % 8, warm, torch.arange(64) % 8, ref_includes_query=True)
    reset_peak()
    base = rss_mb()
    totals = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        values = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
        totals.append((time.perf_counter() - start, time.process_time() - cpu))
    total, cpu = sorted(totals)[len(totals) // 2]
    return {
        "total": total,
        "cpu": cpu,
        "extra_mb": peak_mb() - base,
        "values": {k: float(v) for k, v in values.items()},
    }


def in_subprocess(kind: str, scale: str, threads: int, backend: str, repeats: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_worker",
        kind,
        "--scales",
        scale,
        "--threads",
        str(threads),
        "--backend",
        backend,
        "--metric_set",
        METRIC_SET,
        "--repeats",
        str(repeats),
    ] + ([] if FAISS_REFERENCE else ["--no_faiss"])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the scale sweep beyond SOP: query/gallery protocol, exact vs faiss indexes -------------------

SWEEP_INTRINSIC_DIM = 16
SWEEP_METRICS = ["e_recall@1", "e_recall@10", "precision@1", "mAP@R"]
SWEEP_CONFIGS = {  # name -> (backend, index)
    "exact (ranking pass)": ("auto", "flat"),
    "faiss flat": ("faiss", "flat"),
    "faiss ivf": ("faiss", "ivf"),
    "faiss hnsw": ("faiss", "hnsw"),
    "faiss ivfpq": ("faiss", "ivfpq"),
}


def sweep_data(n_gallery: int, n_queries: int, per_class: int = 10, seed: int = 0):
    """A clustered unit-norm gallery of ``n_gallery`` (classes of ``per_class``) and ``n_queries``
    queries of random gallery classes; returns embeddings, labels and the query/gallery masks.

    Points live near a random 16-dimensional subspace of the 128-d space (class centres and
    within-class noise there, plus a little isotropic noise): trained embeddings have a low
    intrinsic dimension, and on isotropic random clusters in 128-d every neighbour past the own
    class is arbitrary, so no approximate index can reproduce it and search recall would measure
    the data, not the index. The noise level puts exact Recall@1 near 0.88 (a trained SOP model)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = n_gallery // per_class
    labels = np.concatenate([np.repeat(np.arange(c), per_class), rng.integers(0, c, n_queries)])
    centres = rng.standard_normal((c, SWEEP_INTRINSIC_DIM)).astype(np.float32)
    z = centres[labels] + np.float32(0.4) * rng.standard_normal(
        (len(labels), SWEEP_INTRINSIC_DIM), dtype=np.float32
    )
    lift = rng.standard_normal((SWEEP_INTRINSIC_DIM, DIM)).astype(np.float32) / np.sqrt(SWEEP_INTRINSIC_DIM)
    x = z @ lift + np.float32(0.02) * rng.standard_normal((len(labels), DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    is_query = np.zeros(len(labels), dtype=bool)
    is_query[n_gallery:] = True
    return x, labels.astype(np.int64), is_query


def run_sweep_point(n_gallery: int, n_queries: int, config: str, threads: int) -> dict:
    import torch

    import metrics

    torch.set_num_threads(threads)
    backend, index = SWEEP_CONFIGS[config]
    warm = torch.nn.functional.normalize(torch.randn(640, 8), dim=1)  # loads kernels / faiss
    metrics.compute(SWEEP_METRICS, warm, torch.arange(640) % 8, backend=backend, index=index)
    x, y, q = sweep_data(n_gallery, n_queries)
    x, y, q = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(q)
    reset_peak()
    base = rss_mb()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    values = metrics.compute(
        SWEEP_METRICS,
        x,
        y,
        query_mask=q,
        gallery_mask=~q,
        seed=1,
        backend=backend,
        index=index,
        timings=timings,
    )
    return {"total": time.perf_counter() - start, "extra_mb": peak_mb() - base, "values": values}


def sweep(sizes: list[int], n_queries: int, threads: int, configs: list[str]) -> None:
    rows = []
    for n in sizes:
        for config in configs:
            cmd = [sys.executable, __file__, "--_sweep_point", str(n), str(n_queries), config]
            cmd += ["--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{config} at {n}: failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((n, config, r))
            print(json.dumps({"gallery": n, "config": config, **r}), flush=True)
    print(f"\nquery/gallery sweep: {n_queries:,} queries, D={DIM}, threads={threads}; seconds, MB")
    print(
        "| gallery | backend / index | total s | extra MB | e_recall@1 | e_recall@10 | mAP@R | search_recall |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, config, r in rows:
        v = r["values"]
        recall = next((f"{v[k]:.4f} ({k})" for k in v if k.startswith("search_recall@")), "exact")
        print(
            f"| {n:,} | {config} | {r['total']:.1f} | {r['extra_mb']:.0f} | {v['e_recall@1']:.4f} | "
            f"{v['e_recall@10']:.4f} | {v['mAP@R']:.4f} | {recall} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sweep",
        type=int,
        nargs="+",
        default=None,
        help="instead of the CUB/CARS/SOP comparison: gallery sizes of the query/gallery scale sweep "
        "(e.g. 200000 1000000), exact ranking pass vs faiss flat/ivf/hnsw/ivfpq",
    )
    p.add_argument("--sweep_queries", type=int, default=10_000)
    p.add_argument("--sweep_configs", nargs="+", default=list(SWEEP_CONFIGS), choices=list(SWEEP_CONFIGS))
    p.add_argument("--_sweep_point", nargs=3, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--scales",
        nargs="+",
        default=DEFAULT_SCALES,
        choices=list(SCALES),
        help="cub, cars, sop (default) and inat (136,093 images: add it explicitly)",
    )
    p.add_argument(
        "--contended",
        nargs="?",
        const="on",
        default="off",
        choices=["off", "on", "both"],
        help="run beside one busy-loop process per core (on), or without and with them side by side (both)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "torch"])
    p.add_argument("--no_pml", action="store_true")
    p.add_argument(
        "--no_faiss",
        action="store_true",
        help="skip faiss's exact kNN search printed for reference (minutes at iNaturalist scale)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="timed runs per measurement, the median is reported (0: 5 at CUB/CARS scale, 1 at SOP)",
    )
    p.add_argument(
        "--metric_set",
        default="study",
        choices=["study", "superset", "pml"],
        help="study: the default list (+ MAP@R family); superset: + every AccuracyCalculator metric "
        "(ami, mAP, mrr); pml: only what AccuracyCalculator computes",
    )
    p.add_argument(
        "--probabilistic",
        action="store_true",
        help="instead of the comparison: the uncertainty and verification metrics' cost on top of the "
        "study set, per scale",
    )
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    opt = p.parse_args()
    if opt._sweep_point:
        n, nq, config = opt._sweep_point
        print(json.dumps(run_sweep_point(int(n), int(nq), config, opt.threads)))
        return
    if opt.sweep:
        sweep(opt.sweep, opt.sweep_queries, opt.threads, opt.sweep_configs)
        return
    global METRIC_SET, FAISS_REFERENCE
    METRIC_SET = opt.metric_set
    FAISS_REFERENCE = not opt.no_faiss
    if opt._worker:
        fn = {"ours": run_ours, "prob": run_probabilistic, "pml": run_pml}[opt._worker]
        args = (
            (opt.scales[0], opt.threads, opt.repeats)
            if opt._worker == "pml"
            else (opt.scales[0], opt.threads, opt.backend, opt.repeats)
        )
        print(json.dumps(fn(*args)))
        return
    if opt.probabilistic:
        probabilistic(opt.scales, opt.threads, opt.backend, opt.repeats)
        return

    modes = {"off": ["idle"], "on": ["contended"], "both": ["idle", "contended"]}[opt.contended]
    print(
        f"load (1 min) {load():.2f} at start; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"modes: {', '.join(modes)} ('idle' = no busy loops of ours; other jobs may share the cores)",
        flush=True,
    )
    results = {}  # (scale, mode) -> (ours, pml, load before, load after)
    for scale in opt.scales:
        repeats = opt.repeats or (1 if scale in ("sop", "inat") else 5)
        for mode in modes:
            with contention(mode == "contended") as spinners:
                before = load()
                ours = in_subprocess("ours", scale, opt.threads, opt.backend, repeats)
                pml = None if opt.no_pml else in_subprocess("pml", scale, opt.threads, opt.backend, repeats)
                after = load()
            results[(scale, mode)] = (ours, pml, before, after)
            raw = {"scale": scale, "mode": mode, "spinners": spinners, "load": [before, after], "ours": ours}
            print(json.dumps({**raw, "pml": pml}), flush=True)  # raw, as it completes
    print(f"load (1 min) {load():.2f} at end")

    print(
        f"\nthreads={opt.threads}, backend={opt.backend}, D={DIM}; wall seconds (median run), memory in MB; "
        "CPU s = the process's CPU seconds in that run, all threads (on a loaded machine the wall time "
        "stretches, the CPU time much less)"
    )
    stages = sorted({s for ours, *_ in results.values() for s in ours["stages"]})
    head = [
        "scale",
        "N",
        "#metrics",
        "mode",
        "load before→after",
        "ours total",
        *stages,
        "ours CPU s",
        "ours extra MB",
        "PML total",
        "PML CPU s",
        "PML extra MB",
        "PML / ours",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (scale, mode), (ours, pml, before, after) in results.items():
        row = [
            scale,
            f"{SCALES[scale]['n']:,}",
            str(len(metric_names(scale))),
            mode,
            f"{before:.1f}→{after:.1f}",
            f"{ours['total']:.2f}",
            *(f"{ours['stages'].get(s, 0.0):.2f}" for s in stages),
            f"{ours['cpu']:.2f}",
            f"{ours['extra_mb']:.0f}",
        ]
        if pml:
            row += [f"{pml['total']:.2f}", f"{pml['cpu']:.2f}", f"{pml['extra_mb']:.0f}"]
            row.append(f"{pml['total'] / ours['total']:.1f}x")
        else:
            row += ["-", "-", "-", "-"]
        print("| " + " | ".join(row) + " |")

    for mode in modes:
        growth_table({s: results[(s, m)][0] for s, m in results if m == mode}, stages, mode)

    if FAISS_REFERENCE:
        print("\nfaiss-cpu exact kNN search (IndexFlatL2, every query) for reference, seconds:")
        for (scale, mode), (ours, *_) in results.items():
            ref = ", ".join(f"{k}: {v:.2f}" for k, v in ours.get("faiss_knn", {}).items())
            print(f"{scale} ({mode}): {ref} (our whole ranking pass: {ours['stages'].get('ranking', 0.0):.2f})")

    pairs = [
        ("precision@1", "precision_at_1"),
        ("r_precision", "r_precision"),
        ("mAP@R", "mean_average_precision_at_r"),
        ("nmi", "NMI"),
        ("ami", "AMI"),
        ("mAP", "mean_average_precision"),
        ("mrr", "mean_reciprocal_rank"),
    ]
    print(
        "\nmetric values (ours | PML, same data; NMI/AMI: each its own k-means; PML's mean AP and MRR "
        "only see the first k = max class size results, ours are exact)"
    )
    for (scale, mode), (ours, pml, *_) in results.items():
        if mode != modes[0]:
            continue  # the same numbers in every mode
        shared = ", ".join(
            f"{a} {ours['values'][a]:.4f} | {pml['values'][b]:.4f}"
            for a, b in pairs
            if pml and a in ours["values"]
        )
        print(f"{scale}: {shared}")
        print(f"{scale} (ours, all): " + ", ".join(f"{k} {v:.4f}" for k, v in ours["values"].items()))
        if pml:
            print(f"{scale} (PML, all): " + ", ".join(f"{k} {v:.4f}" for k, v in pml["values"].items()))


def slope(ns: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) over log(N): the exponent p of value ∝ N^p."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(ns, values, strict=True) if v > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else float("nan")


def growth_table(ours: dict[str, dict], stages: list[str], mode: str) -> None:
    """Seconds per stage and peak extra MB at each scale, and their exponent of N."""
    scales = sorted(ours, key=lambda s: SCALES[s]["n"])
    if len(scales) < 2:
        return
    ns = [SCALES[s]["n"] for s in scales]
    rows = [("total s", [ours[s]["total"] for s in scales])]
    rows += [(f"{st} s", [ours[s]["stages"].get(st, 0.0) for s in scales]) for st in stages]
    rows.append(("extra MB", [ours[s]["extra_mb"] for s in scales]))
    steps = list(itertools.pairwise(scales))
    print(
        f"\ngrowth with N ({mode}): exponent p of value ∝ N^p, fitted over {', '.join(scales)}, and "
        f"between consecutive scales (k-means k = classes: "
        + ", ".join(f"{s} {SCALES[s]['classes']:,}" for s in scales)
        + ")"
    )
    head = ["quantity", *(f"{s} (N={SCALES[s]['n']:,})" for s in scales), "exponent (fit)"]
    head += [f"{a}→{b}" for a, b in steps]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, values in rows:
        row = [name, *(f"{v:.3f}" if name.endswith(" s") else f"{v:.0f}" for v in values)]
        row.append(f"{slope(ns, values):.2f}")
        for a, b in steps:
            i, j = scales.index(a), scales.index(b)
            row.append(f"{slope([ns[i], ns[j]], [values[i], values[j]]):.2f}")
        print("| " + " | ".join(row) + " |")
    if "sop" in ours and "inat" in ours:
        t, m = ours["inat"]["total"] / ours["sop"]["total"], ours["inat"]["extra_mb"]
        print(f"iNat / SOP time: {t:.2f}x (target <= 4x); iNat extra memory: {m:.0f} MB (target <= 1024 MB)")


if __name__ == "__main__":
    main()
