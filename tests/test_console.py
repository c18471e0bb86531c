"""The console of a run (issue 15, point 7) and its compute accounting (issue 17, point 4).

* a run whose output is not a terminal (a sweep log) writes no progress bar and one short line per
  epoch (R@1, MAP@R, NMI per split; every metric stays in metrics.csv);
* on a terminal (a pseudo-terminal here) one bar line shows the stage and the run's ETA;
* metrics.csv holds ``train_images_per_s`` / ``eval_images_per_s`` per epoch, and summary.json a
  ``compute`` entry whose rates are the means of those columns.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import logging
import math
import os
import select
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from evaluation.console import epoch_line, format_short, label, selected_line, shown_metrics
from utilities import distributed, progress
from utilities.cli import setup_logging
from utilities.progress import Progress, close_bars, format_seconds
from utilities.resources import column_mean, compute_summary, host_peak_mb, peak_memory

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
RUN = [
    "--dataset", "digits", "--arch", "smallcnn_normalize", "--loss", "margin",
    "--batch_mining", "distance", "--lr", "1e-3", "--bs", "60", "--samples_per_class", "4",
    "--kernels", "0", "--device", "cpu", "--use_tv_split", "--tv_split_by_samples",
    "--savename", "run",
]  # fmt: skip
COMPUTE_KEYS = {
    "train_images_per_s",
    "eval_images_per_s",
    "peak_host_mem_mb",
    "peak_gpu_mem_mb",
    "wall_time_s",
}


def main_py(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env, timeout=600, **kwargs
    )


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    """A digits run with every default metric on 3 splits, stdout and stderr pipes (no terminal),
    and no --no_progress: as in a sweep log."""
    save = tmp_path_factory.mktemp("piped")
    proc = main_py(
        [*RUN, "--n_epochs", str(EPOCHS), "--save_path", str(save)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, save / "digits" / "run"


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


# ---- the console -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_without_a_terminal_prints_no_bar_and_one_short_line_per_epoch(piped):
    proc, folder = piped
    assert not any(bar in proc.stderr for bar in ("\r", "ETA", "it/s")), proc.stderr[-500:]
    assert "\r" not in proc.stdout
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [line.split(" (")[0] for line in epochs] == [f"Epoch {e}" for e in range(EPOCHS)]
    # 4 split lines, the run folder, the run's description, one line per epoch, the selected epoch
    assert len(lines) == 6 + EPOCHS + 1, proc.stdout
    for line in epochs:
        assert len(line) < 180, line
        for split in ("testing", "validation", "evaluation"):
            assert f"| {split} R@1 " in line and " MAP@R " in line and " NMI " in line, line
        assert "e_recall@2" not in line and "rho_spectrum" not in line and "ETA " in line
    assert "ETA 0:00" in epochs[-1]
    selected = lines[-1]
    assert selected.startswith("Selected epoch ") and len(selected) < 120, selected
    # the numbers on the line are those of metrics.csv, which keeps every metric
    rows = read_rows(folder)
    first = {r["split"]: r for r in rows if r["epoch"] == "0"}
    assert f"testing R@1 {float(first['testing']['e_recall@1']):.4f} " in epochs[0]
    assert f"NMI {float(first['validation']['nmi']):.4f}" in epochs[0]
    assert f"loss {float(first['training']['loss']):.4f}" in epochs[0]
    assert {"e_recall@2", "f1", "mAP_c", "rho_spectrum@1", "precision@1"} <= set(rows[0])
    print(f"epoch line ({len(epochs[0])} chars): {epochs[0]}")


@pytest.mark.slow
def test_a_terminal_gets_one_progress_bar_with_the_run_eta(tmp_path):
    """stderr on a pseudo-terminal: the bar is drawn there (one line, redrawn with carriage returns,
    never a stack of lines), through training, embedding and metric stages; stdout (a pipe) keeps
    its plain lines."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    width = 120
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, width, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # a full pty buffer would block the run
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    args = [*RUN, "--n_epochs", "2", "--no_train_metrics", "--save_path", str(tmp_path)]
    args += ["--evaluation_metrics", "e_recall@1", "mAP@R", "nmi"]
    proc = main_py(args, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    reader.join(timeout=30)
    os.close(master)
    assert proc.returncode == 0
    bar = b"".join(chunks).decode(errors="replace")
    for stage in ("epoch 1/2 training", "epoch 2/2 testing embedding", "epoch 1/2 validation metrics"):
        assert stage in bar, bar[-2000:]
    assert "[nmi]" in bar and "elapsed, ETA ?" in bar and "loss " in bar
    assert any(f"ETA {format_seconds(s)}" in bar for s in range(0, 3600)), bar[-2000:]  # known after epoch 1
    # one line: redrawn with \r, never wider than the terminal; the only line breaks are those the
    # log lines themselves bring
    assert bar.count("\r") > 10 and bar.replace("\r\n", "").count("\n") == 0, bar[-2000:]
    assert max(len(draw) for draw in bar.replace("\r\n", "\r").split("\r")) <= width
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("Epoch ")][1].startswith("Epoch 1 (")
    assert "\r" not in proc.stdout


def test_no_progress_or_no_terminal_means_no_bar(monkeypatch):
    opt = argparse.Namespace(no_progress=False, n_epochs=3)
    monkeypatch.setattr(progress, "is_terminal", lambda stream: True)
    assert Progress.for_run(opt, distributed.SINGLE).enabled
    assert not Progress.for_run(argparse.Namespace(no_progress=True, n_epochs=3), distributed.SINGLE).enabled
    rank1 = distributed.Context(rank=1, world_size=2, local_rank=1)
    assert not Progress.for_run(opt, rank1).enabled  # rank 0 reports the run
    monkeypatch.undo()
    assert not progress.is_terminal(io.StringIO()) and not Progress.for_run(opt, distributed.SINGLE).enabled
    items = [1, 2, 3]
    assert Progress(3).track(items, "training") is items and Progress(3).steps("metrics", 3) is None


def test_the_bar_is_one_line_through_every_stage():
    stream = io.StringIO()
    clock = iter(range(0, 1000, 5)).__next__  # every reading 5 s later
    bar = Progress(4, enabled=True, stream=stream, clock=lambda: float(clock()))
    bar.mininterval = 0  # draw every step
    bar.start_epoch(0)
    assert list(bar.track(range(3), "training")) == [0, 1, 2]
    bar.note("loss 0.5000")
    tick = bar.steps("testing metrics", 2)
    tick("e_recall@1")
    tick("nmi")
    bar.end_epoch()
    bar.start_epoch(1)
    list(bar.track(range(2), "testing embedding"))
    bar.close()
    out = stream.getvalue()
    assert "epoch 1/4 training 0/3" in out and "epoch 1/4 training 3/3" in out
    assert "epoch 1/4 testing metrics [nmi] 1/2" in out and "loss 0.5000 | " in out
    assert "epoch 2/4 testing embedding 2/2" in out and "ETA ?" in out
    assert "\n" not in out  # redrawn in place, cleared at the end
    assert bar.eta() is not None and bar.elapsed() > 0


def test_a_log_line_clears_the_bar_and_an_error_removes_it(capsys):
    setup_logging()
    bar = Progress(2, enabled=True, stream=sys.stderr)
    bar.start_epoch(0)
    steps = iter(bar.track(range(3), "training"))
    next(steps)
    assert "epoch 1/2 training 0/3" in capsys.readouterr().err
    logging.getLogger("main").info("Epoch 0: loss 0.5")
    out = capsys.readouterr()
    assert out.out == "Epoch 0: loss 0.5\n"
    cleared, _, redrawn = out.err.rpartition("\r")  # blanked before the line, drawn again after it
    assert cleared.startswith("\r") and cleared.strip() == "" and redrawn.startswith("epoch 1/2 training")
    close_bars()  # what run_entry_point does before its error line
    assert capsys.readouterr().err.strip() == "" and not list(getattr(progress.RunBar, "_instances", ()))


def test_a_terminal_that_reports_no_size_still_gets_the_bar():
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()  # 0 rows, 0 columns: tqdm alone would hide the bar
    with os.fdopen(slave, "w") as stream:
        assert progress.is_terminal(stream) and progress.columns(stream) == 0
        bar = Progress(1, enabled=True, stream=stream)
        bar.start_epoch(0)
        list(bar.track(range(2), "training"))
        bar.close()
    out = b""
    while select.select([master], [], [], 0.5)[0]:  # everything the pty holds, however it is cut
        try:
            out += os.read(master, 65536)
        except OSError:  # the slave end is closed and drained
            break
    os.close(master)
    out = out.decode()
    assert "epoch 1/1 training 2/2 |" in out and max(len(d) for d in out.split("\r")) <= 100


def test_eta_is_the_mean_epoch_time_times_the_epochs_left():
    now = [0.0]
    bar = Progress(10, clock=lambda: now[0])
    bar.start_epoch(3)  # a resumed run: epochs 0-2 ran in another process
    assert bar.eta() is None
    now[0] = 30.0
    bar.end_epoch()
    assert bar.eta() == pytest.approx(30.0 * 6)
    bar.start_epoch(4)
    now[0] = 40.0
    assert bar.eta() == pytest.approx(30.0 * 5 + 20.0)  # the current epoch's expected rest
    now[0] = 100.0
    bar.end_epoch()
    assert bar.eta() == pytest.approx((30.0 + 70.0) / 2 * 5)
    assert format_seconds(bar.eta()) == "4:10" and format_seconds(3723.4) == "1:02:03"


def test_the_console_metrics_and_their_fallbacks():
    computed = ["e_recall@2", "e_recall@4", "nmi", "f1", "mAP@R", "rho_spectrum@0"]
    assert shown_metrics(["e_recall@1", "mAP@R", "nmi"], computed) == ["e_recall@2", "mAP@R", "nmi"]
    assert shown_metrics(["e_recall@1", "mAP@R", "nmi"], ["mAP@R", "f1"], "f1") == ["mAP@R", "f1"]
    assert shown_metrics(["nmi"], computed, "mAP@R") == ["nmi", "mAP@R"]  # the selection metric too
    assert shown_metrics(["e_recall@1", "e_recall@4"], computed) == ["e_recall@2", "e_recall@4"]
    assert [label(n) for n in ("e_recall@1", "c_recall@2", "mAP@R", "nmi", "mAP_c")] == [
        "R@1", "cR@2", "MAP@R", "NMI", "mAP_c",
    ]  # fmt: skip
    res = {"e_recall@1": 0.81234, "mAP@R": 0.5, "nmi": 0.25, "rho_spectrum@0": [1.0], "search_recall@10": 0.9}
    assert format_short(res, ["e_recall@1", "mAP@R", "nmi", "rho_spectrum@0"]) == (
        "R@1 0.8123 MAP@R 0.5000 NMI 0.2500 search_recall@10 0.9000"
    )
    stats = {"loss": 0.123456, "train_time": 12.34}
    line = epoch_line(
        7, stats, {"testing": {**res, "eval_time": 2.0}, "evaluation": None}, ["e_recall@1", "nmi"], eta=75
    )
    assert line == (
        "Epoch 7 (14.3s): loss 0.1235, ETA 1:15 | testing R@1 0.8123 NMI 0.2500 search_recall@10 0.9000"
    )
    assert selected_line(3, "validation", "mAP@R", res, ["mAP@R"]) == (
        "Selected epoch 3 on validation mAP@R; testing: MAP@R 0.5000 search_recall@10 0.9000"
    )


def test_console_metrics_flag(capsys):
    import parameters

    parser = parameters.build_parser()
    assert parser.parse_args([]).console_metrics == ["e_recall@1", "mAP@R", "nmi"]
    assert parser.parse_args(["--console_metrics", "e_recall@4", "f1"]).console_metrics == [
        "e_recall@4",
        "f1",
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["--console_metrics", "recall@1"])
    assert "unknown metric 'recall@1'" in capsys.readouterr().err
    assert "console_metrics" in parameters.RESUME_OVERRIDABLE  # display only: a resume may change it


# ---- compute accounting ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_run_records_its_throughput_and_peak_memory(piped):
    _, folder = piped
    rows = read_rows(folder)
    train = [float(r["train_images_per_s"]) for r in rows if r["split"] == "training"]
    evals = [float(r["eval_images_per_s"]) for r in rows if r["split"] != "training"]
    assert len(train) == EPOCHS and len(evals) == 3 * EPOCHS
    assert all(math.isfinite(v) and v > 0 for v in train + evals)
    summary = json.loads((folder / "summary.json").read_text())
    images = {split: info["images"] for split, info in summary["splits"].items()}
    for r in rows:  # the rate is the images over the time of that row
        if r["split"] == "training":
            assert r["eval_images_per_s"] == ""
            # an epoch is the sampler's full batches of 60: 11 of the 718 training images
            assert images["training"] == 718
            assert float(r["train_images_per_s"]) * float(r["train_time"]) == pytest.approx(660, rel=1e-6)
        else:
            seen = float(r["eval_images_per_s"]) * float(r["eval_time"])
            assert seen == pytest.approx(images[r["split"]], rel=1e-9)
    compute = summary["compute"]
    assert set(compute) == COMPUTE_KEYS
    assert compute["train_images_per_s"] == pytest.approx(sum(train) / len(train), rel=1e-12)
    assert compute["eval_images_per_s"] == pytest.approx(sum(evals) / len(evals), rel=1e-12)
    assert compute["peak_gpu_mem_mb"] is None  # a CPU run
    assert 100 < compute["peak_host_mem_mb"] < 64 * 1024  # torch alone is a few hundred MiB
    assert compute["wall_time_s"] == summary["wall_time"] > 0
    # the per-stage evaluation times stay in the summary's metrics
    stages = summary["metrics"]["testing"]["eval_time_stages"]
    assert {"embed", "ranking", "kmeans"} <= set(stages) and all(v >= 0 for v in stages.values())


def test_peaks_are_kept_over_a_resume_and_summed_over_ranks(monkeypatch):
    own = host_peak_mb()
    assert own > 50  # this process imported torch
    assert peak_memory("cpu") == {"host_mb": pytest.approx(own, rel=0.5), "gpu_mb": None}
    assert peak_memory("cpu", previous={"host_mb": 1e9, "gpu_mb": 12.0}) == {"host_mb": 1e9, "gpu_mb": 12.0}
    ranks = [(100.0, 7.0), (200.0, 9.0), (300.0, None)]  # (host, gpu) of three ranks
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj, ctx: ranks)
    assert peak_memory("cpu", distributed.SINGLE) == {"host_mb": 600.0, "gpu_mb": 9.0}


def test_epoch_rate_is_the_images_of_all_ranks_over_the_slowest(monkeypatch):
    from utilities.resources import epoch_rate

    assert epoch_rate(300, 1.5) == pytest.approx(200.0)
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj, ctx: [(300, 1.5), (300, 2.0)])
    assert epoch_rate(300, 1.5) == pytest.approx(300.0)


def test_compute_summary_means_over_every_row_including_restored_ones():
    rows = [
        {"epoch": 0, "split": "training", "train_images_per_s": 100.0},  # restored by --resume
        {"epoch": 0, "split": "testing", "eval_images_per_s": 10.0},
        {"epoch": 1, "split": "training", "train_images_per_s": "300.0"},  # as read back from a CSV
        {"epoch": 1, "split": "testing", "eval_images_per_s": 30.0},
        {"epoch": 1, "split": "validation", "eval_images_per_s": 50.0},
        {"epoch": 2, "split": "training"},  # a row of a run from before the column
    ]
    out = compute_summary(rows, {"host_mb": 512.0, "gpu_mb": None}, 12.5)
    assert out == {
        "train_images_per_s": 200.0,
        "eval_images_per_s": 30.0,
        "peak_host_mem_mb": 512.0,
        "peak_gpu_mem_mb": None,
        "wall_time_s": 12.5,
    }
    assert column_mean([], "train_images_per_s") is None
