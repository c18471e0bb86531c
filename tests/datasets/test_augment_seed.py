"""Training augmentation keyed on (seed, epoch, sample): the crop an image gets does not depend on
the DataLoader worker, the process (torchrun rank) or the order in which images are loaded."""

from __future__ import annotations

import torch

from datasets.base import SplitOptions, sample_seed
from datasets.cub200 import CUB200
from datasets.digits import Digits
from tests.datasets import fixtures as fx
from tests.datasets.test_contract import IMAGES

SPLIT = SplitOptions(
    use_tv_split=False, tv_split_perc=0.8, tv_split_by_samples=False, samples_per_class=2, seed=1
)


def test_sample_seed_is_a_fixed_function_that_separates_its_inputs():
    assert sample_seed(0, 0, 0) == sample_seed(0, 0, 0) < 2**63
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(5) for i in range(200)}
    assert len(seeds) == 3 * 5 * 200  # no collision among neighbouring inputs
    assert sample_seed(1, 2, 3) != sample_seed(3, 2, 1)  # order matters


def test_digits_shift_depends_on_seed_epoch_and_index_only():
    train = Digits(split=SPLIT).splits()["training"]
    train.set_epoch(7, 0)
    before = torch.get_rng_state()
    forward = [train[i][0] for i in range(40)]
    assert torch.equal(torch.get_rng_state(), before)  # the process RNG is left alone
    torch.manual_seed(123)  # whatever the process RNG holds
    backward = [train[i][0] for i in reversed(range(40))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    train.set_epoch(7, 1)
    next_epoch = [train[i][0] for i in range(40)]
    assert sum(not torch.equal(a, b) for a, b in zip(forward, next_epoch, strict=True)) >= 20
    train.set_epoch(8, 0)
    other_seed = [train[i][0] for i in range(40)]
    assert sum(not torch.equal(a, b) for a, b in zip(forward, other_seed, strict=True)) >= 20


def test_image_pipeline_is_the_same_with_workers_and_in_any_order(tmp_path):
    fx.make_cub_study(tmp_path)
    train = CUB200(source_path=str(tmp_path), split=SPLIT, images=IMAGES).splits()["training"]
    train.set_epoch(1, 3)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:12].tolist()
    direct = {i: train[i][0] for i in order}
    loader = torch.utils.data.DataLoader(train, batch_size=4, sampler=order[::-1], num_workers=2)
    seen = 0
    for images, _, idx in loader:
        for image, i in zip(images, idx.tolist(), strict=True):
            assert torch.equal(image, direct[i]), i
            seen += 1
    assert seen == 12
    train.augment_key = None  # unkeyed: the process RNG decides, so two draws differ
    assert not all(torch.equal(train[i][0], train[i][0]) for i in order[:6])


def test_persistent_training_workers_follow_the_epoch(tmp_path):
    """make_loader keeps training workers alive across epochs; each epoch's keys still reach them,
    so two epochs with persistent workers give exactly the images of the worker-free loader."""
    import argparse

    from datasampler.class_random import ClassRandomSampler
    from utilities.training import make_loader

    fx.make_cub_study(tmp_path)
    train = CUB200(source_path=str(tmp_path), split=SPLIT, images=IMAGES).splits()["training"]

    def epochs(kernels: int) -> list[list[torch.Tensor]]:
        opt = argparse.Namespace(kernels=kernels, bs=4)
        sampler = ClassRandomSampler(labels=train.labels, bs=4, samples_per_class=2, seed=3)
        loader = make_loader(train, opt, batch_sampler=sampler, seed=1)
        assert loader.persistent_workers == (kernels > 0)
        out = []
        for epoch in range(2):
            train.set_epoch(1, epoch)
            out.append([images for images, _, _ in loader])
        return out

    plain, workers = epochs(0), epochs(2)
    for a, b in zip(plain, workers, strict=True):
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(plain[0], plain[1], strict=False))  # epochs differ
