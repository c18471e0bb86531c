"""Backbones + embedding head: ``model = select(opt.arch, opt)``; ``model(x)`` -> (B, embed_dim).

The arch string is ``<backbone>[_<modifier>...]`` (see ``architectures/base.py``); each backbone
is a class with ``name`` and ``build(spec, opt) -> EmbeddingNet``.
"""

from __future__ import annotations

import argparse

from architectures import resnet50, smallcnn
from architectures.base import ArchSpec, EmbeddingNet, parse_arch
from utilities.registry import Registry

REGISTRY = Registry("backbone", flag_prefix="arch")
for _cls in (resnet50.ResNet50, smallcnn.SmallCNN):
    REGISTRY.add(_cls)


def select(arch: str, opt: argparse.Namespace) -> EmbeddingNet:
    """Build the network named by ``arch`` (e.g. ``resnet50_frozen_normalize``)."""
    spec = parse_arch(arch)
    return REGISTRY.get(spec.backbone).build(spec, opt)
