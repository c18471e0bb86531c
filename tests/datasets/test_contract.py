"""The dataset plugin contract: keyword-only context, no flags of their own, no namespace, and no
import of the backbones (the crop size arrives as an argument)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import architectures
import datasets
import parameters
from architectures.base import InputConfig
from datasets.base import ImageOptions, SplitOptions
from datasets.cub200 import CUB200
from datasets.digits import Digits
from tests.conftest import ROOT
from tests.datasets import fixtures as fx
from tests.test_layers import LAZY_OK

SPLIT = SplitOptions(
    use_tv_split=False, tv_split_perc=0.8, tv_split_by_samples=False, samples_per_class=2, seed=1
)
IMAGES = ImageOptions(
    augmentation="base", crop=32, resize=36, decode="reduced", cache="", cache_size=256, workers=0
)


@pytest.mark.parametrize("name", datasets.REGISTRY.names())
def test_plugins_take_only_context(name):
    assert datasets.REGISTRY.hyperparameters(name) == []  # no --data_<name>_* flags
    assert set(datasets.REGISTRY.context(name)) <= {"source_path", "split", "images"}
    with pytest.raises(TypeError):
        datasets.REGISTRY.get(name)(SPLIT)  # keyword-only


def test_an_image_dataset_built_by_hand_equals_the_selected_one(tmp_path):
    fx.make_cub_study(tmp_path)
    by_hand = CUB200(source_path=str(tmp_path), split=SPLIT, images=IMAGES).splits()
    opt = parameters.parse(["--dataset", "cub200", "--source_path", str(tmp_path), "--kernels", "0"])
    selected = datasets.select("cub200", opt, architectures.input_config("smallcnn"))
    assert by_hand.keys() == selected.keys()
    for key in by_hand:
        assert by_hand[key].samples == selected[key].samples
        assert torch.equal(by_hand[key].labels, selected[key].labels)
    torch.manual_seed(0)
    a = by_hand["training"][0][0]
    torch.manual_seed(0)
    assert torch.equal(a, selected["training"][0][0])


def test_crop_and_resize_come_from_the_argument(tmp_path):
    fx.make_cub_study(tmp_path)
    opt = parameters.parse(["--dataset", "cub200", "--source_path", str(tmp_path), "--kernels", "0"])
    splits = datasets.select("cub200", opt, InputConfig(crop=24, resize=28))
    assert splits["training"][0][0].shape == (3, 24, 24)
    assert splits["testing"][0][0].shape == (3, 24, 24)


def test_digits_needs_only_the_split_options():
    splits = Digits(split=SPLIT).splits()
    assert len(splits["training"]) == 901 and len(splits["testing"]) == 896


def test_datasets_do_not_import_other_plugin_packages():
    plugins = {"architectures", "criteria", "batch_mining", "datasampler", "main", "parameters"}
    for file in sorted(Path(ROOT, "datasets").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & plugins, (file.name, names)
            # inside a function only the slow libraries that tests/test_layers.py allows (start-up time)
            lazy_ok = set(names) <= LAZY_OK
            assert node.col_offset == 0 or lazy_ok, f"{file.name}:{node.lineno}: import inside a function"
