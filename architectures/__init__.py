"""Backbones + embedding head: ``model = select(opt.arch, opt)``; ``model(x)`` -> (B, embed_dim), or
the packed distribution of ``--embedding_distribution gaussian|vmf`` (architectures/heads.py).

The arch string is ``<backbone>[_<modifier>...]`` or ``timm:<model>[_<modifier>...]`` (see
``architectures/base.py``). Each backbone is an :class:`~architectures.base.EmbeddingNet` subclass
with a ``name`` and the keyword-only constructor ``cls(spec=, embed_dim=, pretrained=,
pretrained_path=)`` (all context, no hyperparameter flags); :func:`input_config` tells the data
transforms the crop size and normalisation it expects (``cls.input_config_for(spec)``).
:func:`select` is the one place that reads the namespace. ``model.infer(x)`` gives the mean and
the per-image distribution parameters, :func:`confidence` one confidence score per image.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from architectures import base, bninception, googlenet, heads, resnet, smallcnn, timm_backbone
from architectures.base import ArchSpec, EmbeddingNet, InputConfig, autocast_dtype, parse_arch
from architectures.heads import DIRAC, DISTRIBUTIONS, confidence
from utilities.registry import Registry
from utilities.run_card import file_sha256

log = logging.getLogger(__name__)

REGISTRY = Registry("backbone", flag_prefix="arch")
for _cls in (
    resnet.ResNet18,
    resnet.ResNet34,
    resnet.ResNet50,
    resnet.ResNet101,
    bninception.BNInception,
    googlenet.GoogLeNet,
    timm_backbone.Timm,
    smallcnn.SmallCNN,
):
    REGISTRY.add(_cls)


def select(arch: str, opt: argparse.Namespace, *, freeze_mean: bool = False) -> EmbeddingNet:
    """Build the network named by ``arch`` (e.g. ``resnet50_frozen_normalize``).

    Reads ``--embed_dim``, ``--not_pretrained``, ``--pretrained_path``, ``--amp``,
    ``--channels_last`` and ``--embedding_distribution`` (resolved from ``--loss`` by
    parameters.py; a namespace without it builds a ``dirac`` model) from ``opt``.
    ``freeze_mean`` (context: the loss's ``frozen_mean``, PFE) trains only the uncertainty head."""
    distribution = getattr(opt, "embedding_distribution", DIRAC)
    if distribution not in DISTRIBUTIONS:  # "auto" is parameters.py's to resolve, never the network's
        raise ValueError(f"embedding_distribution {distribution!r} is not resolved to one of {DISTRIBUTIONS}")
    spec = parse_arch(arch)
    model = REGISTRY.build(
        spec.backbone,
        opt,
        spec=spec,
        embed_dim=opt.embed_dim,
        pretrained=not opt.not_pretrained,
        pretrained_path=opt.pretrained_path,
    )
    model.set_distribution(distribution, freeze_mean=freeze_mean)
    if freeze_mean and not model.head_loaded:
        log.warning(
            f"{arch}: the frozen mean network's last_linear is untrained (not loaded from --pretrained_path); "
            "give --pretrained_path a checkpoint of a trained deterministic run to train the uncertainty of that model"
        )
    return model.set_precision(opt.amp, opt.channels_last)


def check_arch(arch: str) -> None:
    """Refuse an ``--arch`` whose backbone or modifiers are unknown (a one-line ConfigError)."""
    REGISTRY.get(parse_arch(arch).backbone)


def check_pretrained_path(arch: str, pretrained_path: str) -> None:
    """Refuse ``--pretrained_path`` for a backbone without pretrained weights (``smallcnn``);
    needs only the flags, so it can run when the command line is parsed."""
    if pretrained_path:
        base.check_pretrained_path(REGISTRY.get(parse_arch(arch).backbone), pretrained_path)


def input_config(arch: str) -> InputConfig:
    """Crop size and pixel normalisation that the backbone of ``arch`` expects."""
    spec = parse_arch(arch)
    return REGISTRY.get(spec.backbone).input_config_for(spec)


def weights_identity(arch: str, pretrained: bool, pretrained_path: str) -> str:
    """What the backbone of ``arch`` starts from, for the run card: ``sha256:<hex>`` of the
    ``pretrained_path`` file (hashed now, in chunks), the library's weight tag when ``pretrained``
    (e.g. ``torchvision:ResNet50_Weights.IMAGENET1K_V1``), else ``random``."""
    if pretrained_path:
        return f"sha256:{file_sha256(pretrained_path)}"
    spec = parse_arch(arch)
    cls = REGISTRY.get(spec.backbone)
    if not pretrained or not cls.has_pretrained_weights:
        return "random"
    return cls.pretrained_weights_for(spec)


def backbone_name(arch: str) -> str:
    """``arch`` without the ``normalize`` modifier, modifiers in one order: what two methods that
    differ only in normalising their embedding (part of a loss's definition) share."""
    spec = parse_arch(arch)
    head = f"timm:{spec.model}" if spec.backbone == "timm" else spec.backbone
    mods = [m for m, on in (("frozen", spec.freeze_bn), ("double", spec.pooling == "double"),
                            ("he", spec.head_init == "kaiming")) if on]  # fmt: skip
    return "_".join([head, *mods])


def card_fields(arch: str, pretrained: bool, pretrained_path: str) -> dict[str, Any]:
    """The backbone's part of the run card (utilities/run_card.py): arch, backbone, weights and the
    input resolution (training crop, evaluation resize)."""
    cfg = input_config(arch)
    return {
        "arch": arch,
        "backbone": backbone_name(arch),
        "weights": weights_identity(arch, pretrained, pretrained_path),
        "input_crop": cfg.crop,
        "input_resize": cfg.resize,
    }
