"""End to end under torchrun (CPU, gloo over 127.0.0.1): ``main.py`` on 2 processes, and on 2
"nodes" (two torchrun agents meeting at a c10d rendezvous), follows the single-process run; sharded
evaluation on 3 processes equals the single-process evaluation exactly; a rank killed mid-epoch
stops the run and ``--resume`` under torchrun finishes it bit for bit like the uninterrupted
2-process run. Plus the launch-time errors, in one process.

Why training is compared with tolerances and evaluation exactly: the backbone
(``smallcnn_frozen_normalize``, BatchNorm in eval mode) gives each slice's embeddings bit for bit
as the whole batch's, and evaluation only runs forward passes. A training step's gradient, however,
is the sum of two partial float32 sums instead of one, which rounds differently (~1e-7 relative),
and any near-tie of a ranking or a k-means assignment can flip on such a difference. Measured
here: the mean training loss of every epoch agrees to 3e-8 relative (tested: 1e-5); the metrics
of the 3 epochs agree except where one image changed its rank (largest difference 1/183 on the
validation split; tested: 0.02). The exactness of the distributed arithmetic itself is
tests/distributed/test_parity.py (float64, every loss, to 1e-6); this file checks the launcher,
the data path and the run folder, with tolerances far below what a real defect produces (a wrong
gradient scale or a wrong slice moves the epoch-0 loss by ≥ 1e-3 relative).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main as main_module
from utilities import distributed
from utilities.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--dataset", "digits", "--arch", "smallcnn_frozen_normalize", "--embed_dim", "32",
    "--loss", "proxyanchor", "--loss_proxyanchor_lrmulti", "10", "--optim", "sgd", "--lr", "0.01",
    "--bs", "40", "--samples_per_class", "4", "--kernels", "0", "--n_epochs", "3",
    "--use_tv_split", "--tv_split_by_samples", "--no_train_metrics", "--no_progress",
    "--evaluation_metrics", "e_recall@1", "e_recall@4", "mAP@R", "nmi", "rho_spectrum@1",
    "--storage_metrics", "mAP@R",
]  # fmt: skip
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return out


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run(cmd: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=TIMEOUT)


def read_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def numeric_columns(rows: list[dict[str, str]]) -> dict[tuple[int, str, str], float]:
    skip = {"train_time", "eval_time", "train_images_per_s", "eval_images_per_s", "lr"}
    out = {}
    for row in rows:
        for k, v in row.items():
            if k not in skip and k not in ("epoch", "split") and v not in ("", None):
                out[(int(row["epoch"]), row["split"], k)] = float(v)
    return out


def assert_same_metrics(a: Path, b: Path, tol: float) -> float:
    """Every number of metrics.csv (wall-clock columns aside) within ``tol``; the largest |Δ|."""
    ra, rb = numeric_columns(read_csv(a)), numeric_columns(read_csv(b))
    assert ra.keys() == rb.keys()
    assert {k[0] for k in ra} == {0, 1, 2}
    worst = max(abs(ra[k] - rb[k]) for k in ra)
    assert worst <= tol, [(k, ra[k], rb[k]) for k in ra if abs(ra[k] - rb[k]) > tol][:5]
    return worst


def assert_follows(single: Path, other: Path) -> dict[str, float]:
    """``other`` is the single-process run up to float32 rounding (see the module docstring): the
    loss of every epoch to 1e-5 relative, every metric to 0.02."""
    ra, rb = numeric_columns(read_csv(single)), numeric_columns(read_csv(other))
    assert ra.keys() == rb.keys() and {k[0] for k in ra} == {0, 1, 2}
    loss = {k[0]: abs(ra[k] - rb[k]) / abs(ra[k]) for k in ra if k[2] == "loss"}
    assert max(loss.values()) <= 1e-5, loss
    metrics = {k: abs(ra[k] - rb[k]) for k in ra if k[1] != "training"}
    assert max(metrics.values()) <= 0.02, sorted(metrics.items(), key=lambda kv: -kv[1])[:3]
    return {"loss epoch 0": loss[0], "loss max": max(loss.values()), "metric max": max(metrics.values())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The single-process run and the 2-process run, each started once for the module."""
    save = tmp_path_factory.mktemp("runs")
    single = run([sys.executable, "main.py", *FLAGS, "--save_path", str(save), "--savename", "single"])
    assert single.returncode == 0, single.stderr[-2000:]
    two = run(
        torchrun(
            "--standalone",
            "--nproc_per_node",
            "2",
            "main.py",
            *FLAGS,
            "--save_path",
            str(save),
            "--savename",
            "two",
        )
    )
    assert two.returncode == 0, two.stderr[-2000:]
    return {"save": save, "single": save / "digits" / "single", "two": save / "digits" / "two"}


def test_two_processes_give_the_single_process_metrics(runs):
    worst = assert_follows(runs["single"], runs["two"])
    args = json.loads((runs["two"] / "args.json").read_text())["args"]
    assert args["world_size"] == 2 and args["process_group"] == "gloo" and args["bs"] == 40
    single_args = json.loads((runs["single"] / "args.json").read_text())["args"]
    assert single_args["world_size"] == 1 and single_args["process_group"] == "none"
    print(f"2 processes vs 1: {worst}")

    # compute accounting on rank 0: the global rate (both ranks' images over the slower rank's
    # time; rank 0's own train_time is at most that) and the sum of both ranks' host memory
    for one, two in zip(*(read_csv(runs[k]) for k in ("single", "two")), strict=True):
        if one["split"] == "training":
            images = float(one["train_images_per_s"]) * float(one["train_time"])  # 40 per batch
            seen = float(two["train_images_per_s"]) * float(two["train_time"])
            # a whole number of 40-image batches (rate × time rounds: 119.99999999 is 3 batches)
            assert images == pytest.approx(round(images), abs=1e-6) and round(images) % 40 == 0
            assert 0.8 * images < seen <= images * (1 + 1e-9)
    compute = {k: json.loads((runs[k] / "summary.json").read_text())["compute"] for k in ("single", "two")}
    # the sum over two processes (each with torch loaded) exceeds one process; a max would not
    assert compute["two"]["peak_host_mem_mb"] > compute["single"]["peak_host_mem_mb"]
    assert compute["two"]["peak_gpu_mem_mb"] is None and compute["two"]["eval_images_per_s"] > 0


def test_sharded_evaluation_equals_the_single_process_evaluation(runs):
    """3 processes: the 896 test images do not divide by 3, so the shards differ in size; the
    gathered embeddings must be the single-process ones, in order, and so the metrics."""
    ckpt = runs["single"] / "checkpoint_last.pt"
    common = [
        "--evaluate_only",
        "--checkpoint",
        str(ckpt),
        "--save_path",
        str(runs["save"]),
        "--save_embeddings",
    ]
    three = run(torchrun("--standalone", "--nproc_per_node", "3", "main.py", *common, "--savename", "eval3"))
    assert three.returncode == 0, three.stderr[-2000:]
    one = main_module.main([*common, "--savename", "eval1", "--no_progress"])
    got = json.loads((runs["save"] / "digits" / "eval3" / "summary.json").read_text())["metrics"]
    sizes = {}
    for split, expected in one["metrics"].items():
        a = np.load(runs["save"] / "digits" / "eval1" / f"embeddings_{split}.npz")
        b = np.load(runs["save"] / "digits" / "eval3" / f"embeddings_{split}.npz")
        assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["embeddings"], b["embeddings"])
        sizes[split] = len(a["labels"])
        # equal embeddings; the metrics then differ only where LAPACK's result depends on the thread
        # count (torchrun's ranks run one thread, this test process may run more): rho's SVD, ~1e-11
        for name, value in expected.items():
            if not name.startswith(("eval_time", "eval_images_per_s")):
                assert got[split][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (split, name)
    assert sizes["testing"] % 3 == 2, sizes


def test_rank_zero_is_the_one_writer(runs):
    files = sorted(p.name for p in runs["two"].iterdir())
    assert files == sorted(p.name for p in runs["single"].iterdir())
    assert not list(runs["save"].glob("digits/two_*"))  # rank 1 made no folder of its own
    state = torch.load(runs["two"] / "checkpoint_last.pt", weights_only=False)
    per_rank = state["rng"]["per_rank"]
    assert len(per_rank) == 2  # one complete process-RNG state per rank (restored by the resume test)
    assert all({"python", "numpy", "torch"} <= set(r) and r["torch"].dtype == torch.uint8 for r in per_rank)
    single = torch.load(runs["single"] / "checkpoint_last.pt", weights_only=False)["rng"]
    assert "per_rank" not in single and {"python", "numpy", "torch"} <= set(single)  # old format kept


def test_two_nodes_over_a_c10d_rendezvous(runs):
    port = free_port()
    common = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    common += ["--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "dml-test"]
    flags = [*FLAGS, "--save_path", str(runs["save"]), "--savename", "nodes"]
    nodes = [
        subprocess.Popen(
            torchrun(*common, "--node_rank", str(i), "main.py", *flags),
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=TIMEOUT) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-1500:] for o in outs]
    nodes_run = runs["save"] / "digits" / "nodes"
    assert assert_same_metrics(runs["two"], nodes_run, 0.0) == 0.0  # 2 ranks either way: bit for bit
    print("2 nodes vs 1 process:", assert_follows(runs["single"], nodes_run))


def test_a_killed_rank_stops_the_run_and_resume_finishes_it_exactly(runs):
    flags = [*FLAGS, "--save_path", str(runs["save"]), "--savename", "killed"]
    launch = torchrun("--standalone", "--nproc_per_node", "2", "main.py")
    start = time.monotonic()
    killed = run([*launch, *flags], DML_TEST_KILL_AT="train:1:3", DML_TEST_KILL_RANK="1")
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr, killed.stderr[-1500:]
    assert time.monotonic() - start < TIMEOUT / 2  # the surviving rank did not wait for --dist_timeout
    folder = runs["save"] / "digits" / "killed"
    rows = read_csv(folder)  # epoch 0 finished (training, testing, validation), epoch 1 did not
    assert [(r["epoch"], r["split"]) for r in rows] == [
        ("0", "training"),
        ("0", "testing"),
        ("0", "validation"),
    ]
    resumed = run([*launch, "--resume", str(folder)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # bit for bit: the resumed processes (not yet evaluated) must train with the same thread count
    # as the uninterrupted ones (after their evaluations), see metrics/_threads.py
    assert assert_same_metrics(runs["two"], folder, 0.0) == 0.0


def test_launch_errors_are_one_line_before_any_data(monkeypatch, tmp_path):
    """Each refused launch as torchrun would start rank 0, in this process (no process group is
    joined: every check runs before ``init_process_group``)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    base = ["--dataset", "digits", "--arch", "smallcnn_frozen_normalize", "--kernels", "0", "--save_path"]
    cases = {
        (
            "--bs",
            "41",
            "--samples_per_class",
            "1",
        ): "--bs 41 is the global batch and must be divisible by the 2",
        ("--device", "cpu", "--dist_backend", "nccl"): "--dist_backend nccl needs CUDA",
        ("--device", "cpu", "--sync_bn"): "--sync_bn needs CUDA processes",
    }
    if not torch.cuda.is_available():
        cases[("--device", "cuda")] = "--device cuda was requested but no CUDA device is available"
    for extra, message in cases.items():
        with pytest.raises(ConfigError) as err:
            main_module.main([*base, str(tmp_path / "save"), *extra])
        assert message in str(err.value) and "\n" not in str(err.value), (extra, str(err.value))
    assert not any((tmp_path / "save").rglob("*.csv"))  # no run folder was started


def test_more_processes_than_gpus_on_a_node(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ctx = distributed.Context(rank=3, world_size=4, local_rank=3, local_world_size=4, backend="pending")
    with pytest.raises(ConfigError, match="4 processes on this node but 2 usable GPU"):
        distributed.device_for(ctx, "cuda", [0])
    ok = distributed.Context(rank=1, world_size=4, local_rank=1, local_world_size=2, backend="pending")
    assert distributed.device_for(ok, "auto", [0]) == torch.device("cuda", 1)
    assert distributed.device_for(ok, "cpu", [0]) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert distributed.device_for(ok, "auto", [2, 5, 6]) == torch.device("cuda", 5)  # the --gpu list
    with pytest.raises(ConfigError, match="--gpu 9: only 8 CUDA device"):
        distributed.device_for(ok, "cuda", [7, 9])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 processes on this node but 1 usable GPU"):
        distributed.device_for(ok, "cuda", [0])

    assert distributed.device_for(distributed.SINGLE, "cuda", [0]) is None  # the single-process rule


def test_a_two_process_run_resumes_on_one_process(runs, tmp_path):
    """Another world size: the RNG state of rank 0 is taken (documented: correct, not bit-exact)."""
    import shutil

    folder = tmp_path / "digits" / "two"
    shutil.copytree(runs["two"], folder)
    result = main_module.main(["--resume", str(folder), "--n_epochs", "4", "--no_progress"])
    rows = read_csv(folder)
    assert [r["epoch"] for r in rows if r["split"] == "training"] == ["0", "1", "2", "3"]
    before = read_csv(runs["two"])
    assert rows[: len(before)] == before  # the 2-process history is kept
    args = json.loads((folder / "args.json").read_text())["args"]
    assert args["world_size"] == 2  # args.json is the run's start; the checkpoint has the latest
    state = torch.load(folder / "checkpoint_last.pt", weights_only=False)
    assert state["args"]["world_size"] == 1 and state["epoch"] == 3
    assert 0.0 < result["metrics"]["testing"]["e_recall@1"] <= 1.0
