"""What tune.py's search machinery costs per trial, against the digits trial it wraps.

Two measurements, both on the default store (SQLite in the study folder, in a temporary folder):

* **In the real loop**: ``tune.main`` runs ``--trials`` digits trials (``--epochs`` epochs each;
  the tiny lifecycle-test run: smallcnn, embed_dim 16, a 2-class validation split, MedianPruner)
  in this process. Each loop iteration is timed from one ``claim`` to the next; the search
  machinery is that minus the time inside ``main.main`` (the epoch hook's report/prune calls are
  counted as machinery, not as training). The first trial pays the one-time imports and JIT
  compilation of any first run and is left out of the medians.
* **Storage round-trips** (median over ``--micro_trials`` fake trials on a fresh study, TPE
  sampling once past its 10 random start-up trials): opening the study, ``claim`` (lock,
  dead-worker and heartbeat checks, budget count, ask), ``report`` + ``should_prune`` (per epoch),
  a heartbeat, ``tell``; and rewriting trials.csv + best.json, which the loop does at most every
  10 s (and at the end), so it is not part of a short trial's cost.

Trials run in-process, so no trial pays an interpreter start; the last row shows what one would
(a new ``python -c "import main"``), for comparison. Target: machinery < 2% of a digits trial and
< 1 s. Run: ``python benchmarks/bench_tune.py [--trials 3 --epochs 2 --micro_trials 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tune  # noqa: E402 - after the repository root is on sys.path

TINY = [
    "--dataset", "digits", "--arch", "smallcnn_normalize", "--loss", "margin", "--batch_mining", "distance",
    "--bs", "60", "--kernels", "0", "--no_progress", "--seed", "5", "--embed_dim", "16",
    "--evaluation_metrics", "e_recall@1", "e_recall@2", "mAP@R", "--use_tv_split", "--tv_split_perc", "0.6",
    "--no_train_metrics",
]  # fmt: skip
SPACE = ["lr=loguniform:1e-4:1e-2", "samples_per_class=choice:2,4"]


def tune_argv(save: Path, study: str, trials: int, epochs: int) -> list[str]:
    return [
        "--study", study, "--search", *SPACE, "--n_trials", str(trials), "--pruner", "median",
        "--", *TINY, "--n_epochs", str(epochs), "--save_path", str(save),
    ]  # fmt: skip


def real_loop(save: Path, trials: int, epochs: int) -> tuple[list[float], list[float]]:
    """Per trial: seconds inside main.main (training), seconds of search machinery."""
    claims: list[float] = []
    inside: list[float] = []
    real_claim, real_main = tune.claim, tune.run_main.main

    def timed_claim(*args, **kwargs):
        claims.append(time.perf_counter())
        return real_claim(*args, **kwargs)

    def timed_main(argv, on_epoch=None):
        hook_time = [0.0]

        def hook(*args):
            start = time.perf_counter()
            try:
                on_epoch(*args)
            finally:
                hook_time[0] += time.perf_counter() - start

        start = time.perf_counter()
        result = real_main(argv, on_epoch=hook if on_epoch else None)
        inside.append(time.perf_counter() - start - hook_time[0])
        return result

    tune.claim, tune.run_main.main = timed_claim, timed_main
    try:
        tune.main(tune_argv(save, "bench", trials, epochs))
    finally:
        tune.claim, tune.run_main.main = real_claim, real_main
    # claims[i] starts trial i; the last claim (budget taken) closes the last trial
    loops = [b - a for a, b in itertools.pairwise(claims)]
    return inside, [loop - train for loop, train in zip(loops, inside, strict=True)]


def storage_ops(save: Path, trials: int, epochs: int) -> dict[str, float]:
    """Median seconds of each storage operation over ``trials`` fake trials."""
    setup = tune.prepare(tune_argv(save, "micro", trials, epochs))
    start = time.perf_counter()
    with tune.quiet_optuna():
        study, storage, _ = tune.open_study(setup)
    times: dict[str, list[float]] = {"open study": [time.perf_counter() - start]}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        times.setdefault(name, []).append(time.perf_counter() - t0)

    for i in range(trials):
        with timed("claim (lock, checks, ask)"):
            trial = tune.claim(setup, study, storage)
        with timed("record run folder"):
            trial.set_user_attr("run_folders", [f"/runs/t{i}"])
        for epoch in range(epochs):
            with timed("report + should_prune (per epoch)"):
                trial.report(0.5 + 0.01 * ((i * 7 + epoch) % 11), epoch)
                trial.should_prune()
        with timed("heartbeat"):
            storage.record_heartbeat(trial._trial_id)
        with timed("tell"):
            study.tell(trial, 0.5 + 0.001 * i)
        with timed("trials.csv + best.json"):
            tune.write_tables(setup, study)
    return {name: statistics.median(v) for name, v in times.items()}


def process_start() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import main"], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--trials", type=int, default=3, help="digits trials in the real loop (the first is warm-up)"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--micro_trials", type=int, default=20)
    p.add_argument("--no_process_start", action="store_true", help="skip the interpreter-start row")
    args = p.parse_args(argv)
    logging.disable(logging.INFO)  # the runs' lines would bury the table
    with tempfile.TemporaryDirectory() as tmp:
        train, machinery = real_loop(Path(tmp), args.trials, args.epochs)
        ops = storage_ops(Path(tmp), args.micro_trials, args.epochs)
    trial = statistics.median(train[1:] or train)
    loop = statistics.median(machinery[1:] or machinery)
    once = ("open study", "trials.csv + best.json", "report + should_prune (per epoch)")
    per_trial = sum(v for k, v in ops.items() if k not in once)
    per_trial += args.epochs * ops["report + should_prune (per epoch)"]
    rows = [
        (f"digits trial, {args.epochs} epochs (main.main, median of trials 2..{args.trials})", trial),
        ("search machinery per trial, measured in the loop", loop),
        ("  storage round-trips per trial (sum of the rows below)", per_trial),
        *((f"    {name}", value) for name, value in ops.items() if name not in once[:2]),
        ("trials.csv + best.json (every 10 s and at the end)", ops["trials.csv + best.json"]),
        ("open study (once per worker)", ops["open study"]),
    ]
    if not args.no_process_start:
        rows.append(
            ("new interpreter + import main (per trial if trials were subprocesses)", process_start())
        )
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'seconds':>9}  {'% of trial':>10}")
    for name, value in rows:
        print(f"{name:{width}}  {value:9.4f}  {100 * value / trial:9.2f}%")
    ok = loop < 0.02 * trial and loop < 1.0
    print(
        f"target (machinery < 2% of a trial and < 1 s): {'met' if ok else 'NOT met'}; the machinery is 2% of a "
    )
    print(
        f"trial of {loop / 0.02:.1f} s (this run's trials: {args.epochs} epochs of {trial / args.epochs:.2f} s)"
    )
    return {"trial": trial, "machinery": loop, "storage_per_trial": per_trial, **ops}


if __name__ == "__main__":
    main()
