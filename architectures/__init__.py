"""Backbones + embedding head: ``model = select(opt.arch, opt)``; ``model(x)`` -> (B, embed_dim).

The arch string is ``<backbone>[_<modifier>...]`` or ``timm:<model>[_<modifier>...]`` (see
``architectures/base.py``). Each backbone is an :class:`~architectures.base.EmbeddingNet` subclass
with a ``name`` and the keyword-only constructor ``cls(spec=, embed_dim=, pretrained=,
pretrained_path=)`` (all context, no hyperparameter flags); :func:`input_config` tells the data
transforms the crop size and normalisation it expects (``cls.input_config_for(spec)``).
:func:`select` is the one place that reads the namespace.
"""

from __future__ import annotations

import argparse

from architectures import base, bninception, googlenet, resnet, smallcnn, timm_backbone
from architectures.base import ArchSpec, EmbeddingNet, InputConfig, autocast_dtype, parse_arch
from utilities.registry import Registry

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


def select(arch: str, opt: argparse.Namespace) -> EmbeddingNet:
    """Build the network named by ``arch`` (e.g. ``resnet50_frozen_normalize``).

    Reads ``--embed_dim``, ``--not_pretrained``, ``--pretrained_path``, ``--amp`` and
    ``--channels_last`` from ``opt``."""
    spec = parse_arch(arch)
    model = REGISTRY.build(
        spec.backbone,
        opt,
        spec=spec,
        embed_dim=opt.embed_dim,
        pretrained=not opt.not_pretrained,
        pretrained_path=opt.pretrained_path,
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
