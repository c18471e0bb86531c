"""benchmarks/bench_train.py runs end to end on a CPU with tiny settings and reports what it says."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_train", None)


TINY = [
    "--device", "cpu",
    "--arch", "smallcnn_normalize",
    "--bs", "8",
    "--image_size", "16",
    "--steps", "2",
    "--warmup", "1",
    "--epoch_steps", "2",  # warm-up + timed steps cross an epoch boundary
    "--n_unique", "4",
    "--jpeg_size", "40", "56",
    "--kernels", "0",
]  # fmt: skip


def test_rates_columns_and_json(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = bench.main(
        [
            *TINY,
            "--loaders",
            "plain,cache,decode_jpeg",
            "--data_root",
            str(tmp_path / "data"),
            "--json",
            str(out),
        ]
    )
    assert [r["loader"] for r in rows] == ["plain", "cache", "decode_jpeg"]
    for row in rows:
        assert tuple(row) == bench.COLUMNS
        assert row["arch"] == "smallcnn_normalize" and row["workers"] == 0
        for key in ("full_img_s", "synthetic_img_s", "loader_img_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["efficiency"] == pytest.approx(row["full_img_s"] / row["synthetic_img_s"], rel=1e-12)
        assert row["peak_gpu_gib"] is None  # CPU: no GPU memory to report
    assert len({r["synthetic_img_s"] for r in rows}) == 1  # one ceiling per backbone

    written = json.loads(out.read_text())
    assert written["columns"] == list(bench.COLUMNS)
    assert written["rows"] == rows
    assert written["meta"]["epoch_steps"] == 2 and written["meta"]["crop"] == [16]
    assert written["meta"]["cache_build_s"] is not None and written["meta"]["failed"] == []

    table = capsys.readouterr().out
    assert "| smallcnn_normalize | decode_jpeg | 0 |" in table
    assert "efficiency" in table.splitlines()[-5]  # the header row of the Markdown table

    # --data_root keeps the generated data and the cache for later runs
    assert (tmp_path / "data" / "cub200" / "images").is_dir() and (tmp_path / "data" / "cache").is_dir()


def test_clocked_times_only_the_timed_steps_and_finds_epoch_starts(bench):
    import torch

    batch = (torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4), torch.arange(4))
    source = iter([(0, batch), (0, batch), (1, batch), (1, batch), (1, batch)])
    clocked = bench.Clocked(source, warmup=1, steps=4, device=torch.device("cpu"))
    assert sum(1 for _ in clocked) == 5
    assert clocked.images == 16 and clocked.seconds > 0 and clocked.rate > 0
    assert clocked.epoch_stall() is not None  # epoch 1 starts at the second timed step
    no_boundary = bench.Clocked(iter([(0, batch)] * 3), warmup=1, steps=2, device=torch.device("cpu"))
    list(no_boundary)
    assert no_boundary.epoch_stall() is None


def test_unknown_loader_is_refused(bench):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--loaders", "plain,gpu"])
    assert [v.name for v in bench.parse_loaders("cache+persistent, plain")] == ["cache+persistent", "plain"]
