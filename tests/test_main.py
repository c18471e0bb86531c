"""main.py end to end on the embedded digits dataset: run folder, determinism, W&B, bad input."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

import main

# wall-clock seconds and the rates derived from them: the only non-deterministic columns
TIME_COLUMNS = {"train_time", "eval_time", "train_images_per_s", "eval_images_per_s"}


def digits_args(save: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        "digits",
        "--arch",
        "smallcnn_normalize",
        "--loss",
        "margin",
        "--batch_mining",
        "distance",
        "--n_epochs",
        "1",
        "--lr",
        "1e-3",
        "--bs",
        "60",
        "--samples_per_class",
        "4",
        "--kernels",
        "0",
        "--device",
        "cpu",
        "--no_progress",
        "--save_path",
        str(save),
        "--savename",
        "run",
        *extra,
    ]


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_the_run_folder(tmp_path):
    summary = main.main(digits_args(tmp_path, "--n_epochs", "2"))
    folder = tmp_path / "digits" / "run"
    for name in ("args.json", "metrics.csv", "summary.json", "checkpoint_last.pt", "checkpoint_best.pt"):
        assert (folder / name).is_file(), name

    args = json.loads((folder / "args.json").read_text())
    assert args["args"]["loss"] == "margin" and "versions" in args and "git_commit" in args

    rows = read_rows(folder)
    assert [(r["epoch"], r["split"]) for r in rows] == [
        ("0", "training"),
        ("0", "testing"),
        ("0", "evaluation"),
        ("1", "training"),
        ("1", "testing"),
        ("1", "evaluation"),
    ]
    for row in rows:
        if row["split"] == "training":
            assert float(row["loss"]) > 0
        else:
            for metric in ("e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP@R"):
                assert 0.0 <= float(row[metric]) <= 1.0

    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk["selection_split"] == "testing" and on_disk["selected_on_test_split"] is True
    assert "TEST split" in on_disk["note"]
    best = on_disk["selected_epoch"]
    test_rows = [r for r in rows if r["split"] == "testing"]
    r1 = [float(r["e_recall@1"]) for r in test_rows]
    assert best == max(range(len(r1)), key=lambda i: (r1[i], -i))  # first epoch with the best R@1
    assert on_disk["metrics"]["testing"]["e_recall@1"] == pytest.approx(r1[best])
    assert summary["selected_epoch"] == best


def test_validation_split_is_used_for_selection_and_train_metrics_can_be_skipped(tmp_path):
    summary = main.main(digits_args(tmp_path, "--use_tv_split", "--no_train_metrics"))
    rows = read_rows(tmp_path / "digits" / "run")
    assert {r["split"] for r in rows} == {"training", "testing", "validation"}
    assert summary["selection_split"] == "validation" and summary["selected_on_test_split"] is False
    splits = summary["splits"]  # images, classes and a membership hash of every split
    assert {k: (v["images"], v["classes"]) for k, v in splits.items()} == {
        "training": (720, 4),
        "validation": (181, 1),
        "evaluation": (720, 4),
        "testing": (896, 5),
    }
    assert splits["training"]["hash"] == splits["evaluation"]["hash"] != splits["testing"]["hash"]


def test_same_seed_gives_identical_metrics(tmp_path):
    main.main(digits_args(tmp_path / "a", "--n_epochs", "2"))
    main.main(digits_args(tmp_path / "b", "--n_epochs", "2"))
    a, b = (read_rows(tmp_path / x / "digits" / "run") for x in "ab")
    strip = [[{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows] for rows in (a, b)]
    assert strip[0] == strip[1]
    main.main(digits_args(tmp_path / "c", "--n_epochs", "2", "--seed", "2"))
    c = read_rows(tmp_path / "c" / "digits" / "run")
    assert [r["loss"] for r in c if r["split"] == "training"] != [
        r["loss"] for r in a if r["split"] == "training"
    ]


def test_wandb_offline_logs_and_never_stores_the_key(tmp_path, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_SILENT", "true")
    main.main(digits_args(tmp_path, "--log_online", "--project", "p", "--group", "g"))
    folder = tmp_path / "digits" / "run"
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_wandb_failure_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    main.main(digits_args(tmp_path, "--log_online"))
    assert "W&B logging disabled" in capsys.readouterr().out
    assert (tmp_path / "digits" / "run" / "summary.json").is_file()


def test_wandb_failing_mid_run_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    import wandb

    class DyingRun:
        calls = 0
        summary: dict = {}

        def log(self, *args, **kwargs):
            DyingRun.calls += 1
            raise ConnectionError("wandb service died")

        def finish(self):
            raise AssertionError("not reached: W&B is off after the first failure")

    monkeypatch.setattr(wandb, "init", lambda *a, **kw: DyingRun())
    main.main(digits_args(tmp_path, "--log_online", "--n_epochs", "2"))
    out = capsys.readouterr().out
    assert out.count("W&B failed (ConnectionError") == 1 and DyingRun.calls == 1
    rows = read_rows(tmp_path / "digits" / "run")
    assert sorted({int(r["epoch"]) for r in rows}) == [0, 1]  # both epochs logged locally
    assert (tmp_path / "digits" / "run" / "summary.json").is_file()


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    with pytest.raises(SystemExit) as exc:
        main.cli()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss", "nope"], "unknown loss 'nope'; choose from: "),
        (["--batch_mining", "nope"], "unknown batch miner 'nope'; choose from: "),
        (["--data_sampler", "nope"], "unknown data sampler 'nope'; choose from: "),
        (["--arch", "nope_normalize"], "unknown backbone 'nope'; choose from: "),
        (["--arch", "smallcnn_frozne"], "unknown modifier"),
        (["--dataset", "nope"], "unknown dataset 'nope'; choose from: "),
        (["--bs", "50", "--samples_per_class", "4"], "must be a positive multiple of --samples_per_class"),
        # refused before the (here unreachable) ImageNet weights are even requested
        (
            ["--loss", "triplet", "--batch_mining", "npair", "--arch", "resnet50_normalize"],
            "loss 'triplet' consumes triplets, but miner 'npair' produces npair",
        ),
        (["--dataset", "cub200", "--source_path", "/nonexistent"], "expected <root>/images/<NNN.Class_Name>"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, flags, message):
    code, err = run_cli(monkeypatch, capsys, digits_args(tmp_path, *flags))
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "digits").exists()  # nothing half-written


def test_incompatible_miner_is_rejected_before_training(default_opt):
    import criteria
    from utilities.errors import ConfigError

    class PairMiner:
        name, tuple_kind = "fake_pairs", "npair"

    with pytest.raises(ConfigError, match="consumes triplets, but miner 'fake_pairs' produces npair"):
        criteria.select("triplet", default_opt, n_classes=10, batchminer=PairMiner())


def test_a_gpu_index_beyond_the_machine_is_a_config_error(monkeypatch):
    import torch

    from utilities.errors import ConfigError
    from utilities.seeding import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--gpu 3: only 1 CUDA device"):
        resolve_device("cuda", [3])
    assert resolve_device("cuda", [0]) == torch.device("cuda", 0)
