"""Backbones + embedding head: ``model = select(opt.arch, opt)``; ``model(x)`` -> (B, embed_dim).

The arch string is ``<backbone>[_<modifier>...]`` or ``timm:<model>[_<modifier>...]`` (see
``architectures/base.py``); each backbone is a class with ``name``, ``build(spec, opt) ->
EmbeddingNet`` and an ``input_config`` (crop size, normalisation) that the data transforms read
through :func:`input_config`.
"""

from __future__ import annotations

import argparse

from architectures import bninception, googlenet, resnet, smallcnn, timm_backbone
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

    ``--amp`` and ``--channels_last`` (if present in ``opt``) are applied to the built network."""
    spec = parse_arch(arch)
    model = REGISTRY.get(spec.backbone).build(spec, opt)
    return model.set_precision(
        getattr(opt, "amp", "off") or "off", bool(getattr(opt, "channels_last", False))
    )


def input_config(arch: str) -> InputConfig:
    """Crop size and pixel normalisation that the backbone of ``arch`` expects."""
    spec = parse_arch(arch)
    cls = REGISTRY.get(spec.backbone)
    if hasattr(cls, "input_config_for"):
        return cls.input_config_for(spec)
    return getattr(cls, "input_config", InputConfig())
