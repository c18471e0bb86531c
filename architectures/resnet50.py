"""ResNet-50 (He et al., CVPR 2016) from torchvision, with ImageNet weights.

Backbone: conv1 … layer4 -> global average pooling (2048) -> ``last_linear`` (2048 -> embed_dim),
the study's ResNet-50 head. Weights are torchvision's ``IMAGENET1K_V1`` (the same checkpoint,
``resnet50-19c8e357``, that the study loaded through ``pretrainedmodels``). ``--not_pretrained``
starts from random weights. When the weights cannot be downloaded (no network), the run stops
with one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse

import torchvision
from torch import nn

from architectures.base import ArchSpec, EmbeddingNet
from utilities.errors import ConfigError


def load_torchvision(builder, weights, pretrained: bool, arch: str) -> nn.Module:
    if not pretrained:
        return builder(weights=None)
    try:
        return builder(weights=weights)
    except Exception as err:  # urllib/SSL/OS errors all mean "weights not reachable"
        raise ConfigError(
            f"could not load ImageNet weights for {arch} ({type(err).__name__}: {err}); "
            f"use --not_pretrained, or make the torchvision weight cache reachable"
        ) from None


class ResNet50:
    """torchvision ResNet-50, average-pooled, ImageNet-pretrained unless --not_pretrained."""

    name = "resnet50"

    @staticmethod
    def build(spec: ArchSpec, opt: argparse.Namespace) -> EmbeddingNet:
        net = load_torchvision(
            torchvision.models.resnet50,
            torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
            not opt.not_pretrained,
            "resnet50",
        )
        net.fc = nn.Identity()
        return EmbeddingNet(net, 2048, opt.embed_dim, spec)
