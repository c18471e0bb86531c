"""main.py for one short epoch on every dataset layout (smallcnn, 32-pixel crops, CPU)."""

from __future__ import annotations

import pytest

import main
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError

RUNS = {
    "cub200": fx.make_cub_official,
    "cars196": fx.make_cars_official,
    "online_products": fx.make_sop,
    "inshop": fx.make_inshop,
    "folder": fx.make_folder,
    "csv": fx.make_csv,
}


def args(name, tmp_path, *extra):
    return [
        "--dataset",
        name,
        "--source_path",
        str(tmp_path),
        "--arch",
        "smallcnn_normalize",
        "--kernels",
        "0",
        "--bs",
        "4",
        "--samples_per_class",
        "2",
        "--n_epochs",
        "1",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--save_path",
        str(tmp_path / "runs"),
        "--savename",
        "run",
        "--no_progress",
        "--no_train_metrics",
        "--evaluation_metrics",
        "e_recall@1",
        *extra,
    ]


@pytest.mark.parametrize("name", list(RUNS))
def test_one_epoch_on_each_dataset(tmp_path, name):
    RUNS[name](tmp_path)
    summary = main.main(args(name, tmp_path))
    recall = summary["metrics"]["testing"]["e_recall@1"]
    assert 0.0 <= recall <= 1.0 and summary["selected_epoch"] == 0
    assert (tmp_path / "runs" / name / "run" / "summary.json").is_file()


def test_cached_adv_run_with_validation(tmp_path):
    fx.make_cub_study(tmp_path)
    summary = main.main(
        args(
            "cub200",
            tmp_path,
            "--data_cache",
            str(tmp_path / "cache"),
            "--data_cache_size",
            "36",
            "--augmentation",
            "adv",
            "--use_tv_split",
            "--tv_split_perc",
            "0.67",
        )
    )
    assert summary["selection_split"] == "validation"
    assert any((tmp_path / "cache").iterdir())


def test_resnet_run_with_amp_and_channels_last(tmp_path):
    fx.make_folder(tmp_path)
    summary = main.main(
        args(
            "folder",
            tmp_path,
            "--arch",
            "resnet18_frozen_normalize",
            "--not_pretrained",
            "--amp",
            "--channels_last",
            "--augmentation",
            "red",
        )
    )
    assert 0.0 <= summary["metrics"]["testing"]["e_recall@1"] <= 1.0


def test_missing_dataset_stops_before_training(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cub200: no dataset found"):
        main.main(args("cub200", tmp_path))
