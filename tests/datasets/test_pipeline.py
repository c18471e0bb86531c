"""The image pipeline: same augmentation as torchvision, reduced-size decode, the uint8 cache,
seeded workers, and the crop/normalisation each backbone asks for."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

import architectures
import datasets
import parameters
from datasets import images as images_mod
from datasets.transforms import build_transforms, torchvision_reference
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError
from utilities.training import make_loader


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    fx.write_jpeg(path, 7, size=(400, 300))
    return path


def run(transform, path: Path, seed: int, convert: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    img = Image.open(path)
    return transform(img.convert("RGB") if convert else img)


@pytest.mark.parametrize("augmentation", ["base", "adv", "red", "big"])
def test_full_decode_is_bit_identical_to_torchvision(jpeg, augmentation):
    ours_train, ours_eval = build_transforms(augmentation, crop=64, resize=72, draft=False)
    ref_train, ref_eval = torchvision_reference(augmentation, crop=64, resize=72)
    for seed in range(6):
        a, b = run(ours_train, jpeg, seed), run(ref_train, jpeg, seed, convert=True)
        assert a.dtype == torch.uint8 and torch.equal(a, b), seed
    assert torch.equal(run(ours_eval, jpeg, 0), run(ref_eval, jpeg, 0, convert=True))
    size = 72 if augmentation == "big" else 64
    assert run(ours_train, jpeg, 0).shape == (3, size, size)


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (150, 1))).save(path)
    train, _ = build_transforms("base", crop=32, resize=36)
    out = run(train, path, 0)
    assert out.shape == (3, 32, 32) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


@pytest.fixture
def draft_calls(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((self.size, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_reduced_decode_keeps_the_same_crop(jpeg, draft_calls):
    fast, fast_eval = build_transforms("base", crop=32, resize=36, draft=True)
    ref, ref_eval = torchvision_reference("base", crop=32, resize=36)
    diffs = []
    for seed in range(20):
        a = run(fast, jpeg, seed).float()
        b = run(ref, jpeg, seed, convert=True).float()
        diffs.append((a - b).abs().mean().item())
    assert draft_calls, "reduced-size decoding never engaged"
    # the crop box is the same; only the resampling path differs (a few grey levels on average)
    assert np.mean(diffs) < 4.0 and max(diffs) < 10.0
    fast_eval, ref_eval = build_transforms("base", 64, 72)[1], torchvision_reference("base", 64, 72)[1]
    n_calls = len(draft_calls)
    a, b = run(fast_eval, jpeg, 0).float(), run(ref_eval, jpeg, 0, convert=True).float()
    assert len(draft_calls) == n_calls + 1 and (a - b).abs().mean() < 3.0
    # a crop that must be up-sampled anyway is never decoded at reduced size
    draft_calls.clear()
    big, _ = build_transforms("base", crop=256, resize=288, draft=True)
    run(big, jpeg, 0)
    assert draft_calls == []


def test_backbone_input_configs():
    assert architectures.input_config("resnet50_frozen_normalize").crop == 224
    assert architectures.input_config("googlenet").crop == 227
    bn = architectures.input_config("bninception_normalize")
    assert bn.crop == 227 and bn.bgr255
    timm_cfg = architectures.input_config("timm:vit_small_patch16_224.dino_normalize")
    assert timm_cfg.crop == 224 and timm_cfg.mean == pytest.approx((0.485, 0.456, 0.406))


def select(name: str, opt: argparse.Namespace) -> dict:
    return datasets.select(name, opt, architectures.input_config(opt.arch))


def _opt(name: str, source: Path, *extra: str) -> argparse.Namespace:
    return parameters.parse(["--dataset", name, "--source_path", str(source), "--kernels", "0", *extra])


def test_crop_follows_the_backbone(tmp_path):
    fx.make_cub_study(tmp_path)
    for arch, size in (("googlenet_normalize", 227), ("resnet18", 224)):
        splits = select("cub200", _opt("cub200", tmp_path, "--arch", arch))
        assert splits["training"][0][0].shape == (3, size, size)
        assert splits["testing"][0][0].shape == (3, size, size)
    splits = select("cub200", _opt("cub200", tmp_path, "--arch", "resnet18", "--augmentation", "big"))
    assert splits["training"][0][0].shape == (3, 256, 256)


def test_cache_is_exact_for_evaluation_and_reused(tmp_path, monkeypatch):
    fx.make_cub_study(tmp_path, size=(80, 60))
    cache = tmp_path / "cache"
    args = ("--arch", "smallcnn", "--data_cache", str(cache), "--data_cache_size", "36")
    plain = select("cub200", _opt("cub200", tmp_path, "--arch", "smallcnn"))
    cached = select("cub200", _opt("cub200", tmp_path, *args))
    for i in range(len(plain["testing"])):
        assert torch.equal(plain["testing"][i][0], cached["testing"][i][0])
    torch.manual_seed(0)
    assert cached["training"][3][0].shape == (3, 32, 32)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert entry.name.startswith("cub200-36-")
    index = np.load(entry / "index.npy")
    assert (index[:, 1] == 36).all() and (index[:, 2] == 48).all()  # 80x60 -> shorter side 36
    builds = []
    monkeypatch.setattr(images_mod.ImageCache, "_build", lambda self, workers: builds.append(1))
    select("cub200", _opt("cub200", tmp_path, *args))
    assert builds == []  # the second run reuses the cache
    # a changed image gives a new cache
    fx.write_jpeg(Path(plain["training"].samples[0]), 999)
    monkeypatch.undo()
    select("cub200", _opt("cub200", tmp_path, *args))
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_cache_smaller_than_eval_resize_is_refused(tmp_path):
    fx.make_cub_study(tmp_path)
    with pytest.raises(ConfigError, match="data_cache_size"):
        select(
            "cub200",
            _opt(
                "cub200",
                tmp_path,
                "--arch",
                "resnet18",
                "--data_cache",
                str(tmp_path / "c"),
                "--data_cache_size",
                "128",
            ),
        )


def test_loader_workers_are_seeded(tmp_path):
    fx.make_cub_study(tmp_path)
    opt = _opt("cub200", tmp_path, "--arch", "smallcnn", "--kernels", "2", "--bs", "6")
    split = select("cub200", opt)["training"]
    batches = []
    for seed in (5, 5, 6):
        sampler = torch.utils.data.BatchSampler(range(12), 6, drop_last=False)
        loader = make_loader(split, opt, batch_sampler=sampler, seed=seed)
        batches.append(torch.cat([b[0] for b in loader]))
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])


def test_cached_training_crops_match_the_file_crops(tmp_path):
    """Same seed -> same crop box and flip; only the resampler differs (torch vs PIL bilinear)."""
    fx.make_cub_study(tmp_path, size=(80, 60))
    plain = select("cub200", _opt("cub200", tmp_path, "--arch", "smallcnn", "--data_decode", "full"))
    # a cache larger than the images stores them unresized
    cached = select(
        "cub200",
        _opt(
            "cub200",
            tmp_path,
            "--arch",
            "smallcnn",
            "--data_cache",
            str(tmp_path / "c"),
            "--data_cache_size",
            "64",
        ),
    )
    for i in range(6):
        torch.manual_seed(i)
        a = plain["training"][i][0].float()
        torch.manual_seed(i)
        b = cached["training"][i][0].float()
        assert b.shape == a.shape == (3, 32, 32)
        assert (a - b).abs().mean() < 2.0, i
