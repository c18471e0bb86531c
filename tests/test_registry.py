"""The Registry contract: duplicate/unknown names, flags from constructor signatures, context
passed explicitly, and every registered plugin of every kind built by hand without a namespace."""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

import pytest
import torch

import architectures
import batch_mining
import criteria
import datasampler
import datasets
import metrics
from tests.criteria.helpers import packed
from utilities.errors import ConfigError
from utilities.registry import Flag, Registry


class _Plugin:
    """A test plugin."""

    name = "toy"

    def __init__(
        self,
        *,
        n_classes: int,
        margin: Annotated[float, "a margin"] = 0.2,
        steps: list[int] = [1, 2],  # noqa: B006 - never mutated, shows a list default
        flag: bool = False,
        on: bool = True,
        form: Literal["arc", "cos"] = "arc",
        shared: Annotated[int, Flag("shared with others", name="data_shared_thing")] = 7,
        maybe: int | None = None,
    ) -> None:
        self.n_classes, self.margin, self.steps, self.flag = n_classes, margin, steps, flag
        self.on, self.form, self.shared, self.maybe = on, form, shared, maybe


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


def test_constructors_must_be_keyword_only_and_explicit():
    class Positional:
        name = "positional"

        def __init__(self, margin: float = 0.1) -> None: ...

    class Opaque:
        name = "opaque"

        def __init__(self, **hparams) -> None: ...

    with pytest.raises(TypeError, match="must be keyword-only"):
        Registry("thing", "loss").add(Positional)
    with pytest.raises(TypeError, match="must be keyword-only"):
        Registry("thing", "loss").add(Opaque)


def test_hyperparameters_and_context_come_from_the_signature():
    reg = _registry()
    assert reg.context("toy") == ["n_classes"]
    hps = {hp.param: hp for hp in reg.hyperparameters("toy")}
    assert list(hps) == ["margin", "steps", "flag", "on", "form", "shared", "maybe"]
    assert hps["margin"].flag == "loss_toy_margin" and hps["margin"].help == "a margin"
    assert hps["shared"].flag == "data_shared_thing" and hps["shared"].default == 7


def test_flags_are_generated_from_the_signature():
    parser = argparse.ArgumentParser()
    _registry().add_args(parser)
    opt = parser.parse_args(
        [
            "--loss_toy_margin",
            "0.5",
            "--loss_toy_steps",
            "3",
            "4",
            "--loss_toy_flag",
            "--no-loss_toy_on",
            "--loss_toy_form",
            "cos",
            "--loss_toy_maybe",
            "3",
        ]
    )
    assert opt.loss_toy_margin == 0.5
    assert opt.loss_toy_steps == [3, 4]
    assert opt.loss_toy_flag is True and opt.loss_toy_on is False
    assert opt.loss_toy_form == "cos" and opt.loss_toy_maybe == 3
    assert opt.data_shared_thing == 7  # explicit flag name
    assert not hasattr(opt, "loss_toy_n_classes")  # context is never a flag
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss_toy_form", "tan"])  # Literal -> choices


def test_build_takes_flags_from_the_namespace_and_context_from_the_caller():
    parser = argparse.ArgumentParser()
    reg = _registry()
    reg.add_args(parser)
    opt = parser.parse_args(["--loss_toy_margin", "0.3"])
    obj = reg.build("toy", opt, n_classes=11, unrelated="ignored")
    assert (obj.n_classes, obj.margin, obj.steps, obj.shared) == (11, 0.3, [1, 2], 7)
    assert reg.build("toy", argparse.Namespace(), n_classes=2).margin == 0.2  # one default: the signature's
    with pytest.raises(TypeError, match=r"needs context \['n_classes'\]"):
        reg.build("toy", opt)


def test_shared_flag_with_conflicting_default_is_an_error():
    class _OtherPlugin:
        name = "other"

        def __init__(self, *, shared: Annotated[int, Flag(name="data_shared_thing")] = 8) -> None: ...

    reg = _registry()
    reg.add(_OtherPlugin)
    with pytest.raises(ValueError, match="declared twice with different defaults"):
        reg.add_args(argparse.ArgumentParser())


REGISTRIES = [
    criteria.REGISTRY,
    criteria.WRAPPERS,
    batch_mining.REGISTRY,
    datasampler.REGISTRY,
    datasets.REGISTRY,
    architectures.REGISTRY,
    metrics.REGISTRY,
]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_every_registry_is_populated_and_its_plugins_have_names(registry):
    assert registry.names()
    for name, cls in registry:
        assert cls.name == name


def test_no_plugin_reads_the_namespace_or_defaults_its_context():
    """Context (no default) is what the plugin cannot know by itself; nothing else is required,
    and no constructor parameter is called ``opt``."""
    allowed = {
        "n_classes",
        "embed_dim",
        "lr",
        "batchminer",
        "criterion",
        "seed",
        "labels",
        "bs",
        "samples_per_class",
        *CONTEXT_DATASETS,
        "spec",
        "pretrained",
        "pretrained_path",
        "k",
        "m",
        "mode",
        "fpr",  # tpr@<fpr>
        "fmr",  # fnmr@<fmr>
    }
    for registry in REGISTRIES:
        for name, _ in registry:
            assert set(registry.context(name)) <= allowed, (registry.kind, name, registry.context(name))
            assert "opt" not in registry.context(name)
    for name in criteria.REGISTRY.names():
        hps = {hp.param for hp in criteria.REGISTRY.hyperparameters(name)}
        assert not hps & {"n_classes", "embed_dim", "seed", "batchminer"}, name


# ---- every plugin, built by hand from its documented context ------------------------------------

CONTEXT_DATASETS = {"source_path", "split", "images"}
SPLIT = datasets.SplitOptions(
    use_tv_split=True, tv_split_perc=0.8, tv_split_by_samples=True, samples_per_class=2, seed=0
)
IMAGES = datasets.ImageOptions(
    augmentation="base", crop=32, resize=36, decode="reduced", cache="", cache_size=256, workers=0
)


def _miner_for(loss_cls) -> batch_mining.BatchMiner | None:
    if not loss_cls.requires_miner:
        return None
    name = next(n for n, c in batch_mining.REGISTRY if c.tuple_kind in loss_cls.tuple_kinds)
    return batch_mining.REGISTRY.get(name)(seed=0)


@pytest.mark.parametrize("name", criteria.REGISTRY.names())
def test_every_loss_builds_by_hand_and_trains(name):
    cls = criteria.REGISTRY.get(name)
    given = {"n_classes": 4, "embed_dim": 8, "lr": 1e-3, "batchminer": _miner_for(cls), "seed": 0}
    loss = cls(**{k: given[k] for k in criteria.REGISTRY.context(name)})
    g = torch.Generator().manual_seed(0)
    x = packed(name, torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1), g)
    x.requires_grad_()  # the points, or the distribution the loss expects packed after them
    value = loss(x, torch.arange(4).repeat_interleave(4))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_the_memory_wrapper_builds_by_hand():
    inner = criteria.REGISTRY.get("triplet")(batchminer=batch_mining.REGISTRY.get("semihard")(seed=0))
    wrapped = criteria.WRAPPERS.get("xbm")(criterion=inner, embed_dim=8, size=32)
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    for _ in range(3):
        assert torch.isfinite(wrapped(x, torch.arange(4).repeat_interleave(4)))
    assert int(wrapped.filled) == 32


@pytest.mark.parametrize("name", batch_mining.REGISTRY.names())
def test_every_miner_builds_by_hand(name):
    miner = batch_mining.REGISTRY.get(name)(seed=0)
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    out = miner(x, torch.arange(4).repeat_interleave(4))
    assert isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out)


@pytest.mark.parametrize("name", datasampler.REGISTRY.names())
def test_every_sampler_builds_by_hand(name):
    labels = torch.arange(20).repeat_interleave(8)
    sampler = datasampler.REGISTRY.get(name)(labels=labels, bs=16, samples_per_class=4, seed=0)
    sampler.init_storage(lambda: torch.randn(len(labels), 8))  # a no-op for memory-less samplers
    batch = next(iter(sampler))
    assert len(batch) == 16 and all(0 <= i < len(labels) for i in batch)


@pytest.mark.parametrize("name", [n for n, _ in metrics.REGISTRY])
def test_every_metric_builds_by_hand(name):
    cls = metrics.REGISTRY.get(name)
    given = {"k": 2, "m": 1, "mode": "intra", "fpr": 0.1, "fmr": 0.1}
    metric = cls(**{k: given[k] for k in metrics.REGISTRY.context(name)})
    x = torch.nn.functional.normalize(torch.randn(24, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    confidence = torch.rand(24, generator=torch.Generator().manual_seed(1))  # the uncertainty metrics
    ctx = metrics.EvalContext(x, torch.arange(3).repeat_interleave(8), seed=0, confidence=confidence)
    ctx.request_ranks(metric.ranks_needed(ctx))
    value = metric(ctx)
    assert value == value or name in {"dists"}  # a finite number (NaN only where defined so)


@pytest.mark.parametrize("name", datasets.REGISTRY.names())
def test_every_dataset_builds_by_hand(name, tmp_path):
    given = {"source_path": str(tmp_path), "split": SPLIT, "images": IMAGES}
    dataset = datasets.REGISTRY.get(name)(**{k: given[k] for k in datasets.REGISTRY.context(name)})
    if name != "digits":  # an empty folder: the image datasets say which layout they expected
        with pytest.raises(ConfigError, match=name):
            dataset.splits()
        return
    splits = dataset.splits()
    assert sorted(splits) == ["evaluation", "testing", "training", "validation"]
    assert splits["training"].n_classes == 5 and splits["testing"].n_classes == 5


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "googlenet", "bninception", "timm"])
def test_backbones_build_by_hand(name):
    spec = architectures.parse_arch("timm:resnet18_normalize" if name == "timm" else f"{name}_normalize")
    cls = architectures.REGISTRY.get(name)
    net = cls(spec=spec, embed_dim=8, pretrained=False, pretrained_path="")
    assert set(architectures.REGISTRY.context(name)) == {"spec", "embed_dim", "pretrained", "pretrained_path"}
    crop = cls.input_config_for(spec).crop
    out = net.eval()(torch.randn(2, 3, crop, crop))
    assert out.shape == (2, 8) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
