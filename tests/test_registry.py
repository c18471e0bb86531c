"""The Registry contract: duplicate/unknown names, flag generation, building from a namespace."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

import architectures
import batch_mining
import criteria
import datasampler
import datasets
from utilities.errors import ConfigError
from utilities.registry import Registry


@dataclass
class _HP:
    margin: float = field(default=0.2, metadata={"help": "a margin"})
    steps: list[int] = field(default_factory=lambda: [1, 2])
    flag: bool = False
    shared: int = field(default=7, metadata={"flag": "data_shared_thing"})
    n_classes: int = field(default=0, metadata={"global": "n_classes"})


class _Plugin:
    """A test plugin."""

    name = "toy"
    Hparams = _HP

    def __init__(self, **hp):
        self.hp = _HP(**hp)


def _registry() -> Registry:
    reg = Registry("thing", flag_prefix="loss")
    reg.add(_Plugin)
    return reg


def test_duplicate_name_is_an_error():
    reg = _registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.add(_Plugin)


def test_unknown_name_lists_valid_names():
    reg = _registry()
    with pytest.raises(ConfigError, match=r"unknown thing 'nope'; choose from: toy"):
        reg.get("nope")


def test_flags_are_generated_from_the_dataclass():
    parser = argparse.ArgumentParser()
    _registry().add_args(parser)
    opt = parser.parse_args(["--loss_toy_margin", "0.5", "--loss_toy_steps", "3", "4", "--loss_toy_flag"])
    assert opt.loss_toy_margin == 0.5
    assert opt.loss_toy_steps == [3, 4]
    assert opt.loss_toy_flag is True
    assert opt.data_shared_thing == 7  # explicit flag name
    assert not hasattr(opt, "loss_toy_n_classes")  # globals are not flags


def test_build_takes_flags_and_globals_from_the_namespace():
    parser = argparse.ArgumentParser()
    reg = _registry()
    reg.add_args(parser)
    opt = parser.parse_args(["--loss_toy_margin", "0.3"])
    opt.n_classes = 11
    obj = reg.build("toy", opt)
    assert obj.hp == _HP(margin=0.3, steps=[1, 2], flag=False, shared=7, n_classes=11)


def test_shared_flag_with_conflicting_default_is_an_error():
    @dataclass
    class _Other:
        shared: int = field(default=8, metadata={"flag": "data_shared_thing"})

    class _OtherPlugin:
        name = "other"
        Hparams = _Other

    reg = _registry()
    reg.add(_OtherPlugin)
    with pytest.raises(ValueError, match="declared twice with different defaults"):
        reg.add_args(argparse.ArgumentParser())


@pytest.mark.parametrize(
    "registry",
    [
        criteria.REGISTRY,
        batch_mining.REGISTRY,
        datasampler.REGISTRY,
        datasets.REGISTRY,
        architectures.REGISTRY,
    ],
    ids=lambda r: r.kind,
)
def test_every_registry_is_populated_and_its_plugins_have_names(registry):
    assert registry.names()
    for name, cls in registry:
        assert cls.name == name


def test_every_plugin_builds_from_the_default_namespace(default_opt):
    """Each criterion, miner and sampler is constructible from the parsed defaults."""
    import torch

    labels = torch.arange(20).repeat_interleave(8)
    for name in batch_mining.REGISTRY.names():
        batch_mining.select(name, default_opt)
    for name in datasampler.REGISTRY.names():
        opt = argparse.Namespace(**vars(default_opt))
        opt.bs, opt.samples_per_class = 16, 4
        try:
            datasampler.select(name, opt, labels)
        except ConfigError as err:  # a sampler may legitimately refuse these labels; it must say why
            assert str(err)
    for name in criteria.REGISTRY.names():
        cls = criteria.REGISTRY.get(name)
        miner = None
        if cls.requires_miner:
            kinds = {m: batch_mining.REGISTRY.get(m).tuple_kind for m in batch_mining.REGISTRY.names()}
            miner_name = next(m for m, k in kinds.items() if k == cls.tuple_kind)
            miner = batch_mining.select(miner_name, default_opt)
        criteria.select(name, default_opt, miner)
