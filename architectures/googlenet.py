"""GoogLeNet / Inception-v1 (Szegedy et al., CVPR 2015), torchvision's BatchNorm variant.

Backbone: torchvision ``googlenet`` without auxiliary heads -> global pooling (1024; average + max
with ``_double``) -> dropout 0.2 -> ``last_linear`` (1024 -> embed_dim). ``transform_input=True``
(what torchvision's ImageNet weights expect; the inputs are ImageNet-normalised and the network
re-maps them). Crop 227, as in the study.

Deviations from the reference: it ran into a ``NameError`` on the first training step (the
``features`` variable was undefined for bare-tensor outputs) and ignored ``--not_pretrained``; here
it trains, honours ``--not_pretrained``/``--pretrained_path``, and also supports ``_frozen``.
"""

from __future__ import annotations

import argparse

import torchvision
from torch import nn

from architectures.base import ArchSpec, EmbeddingNet, GlobalPool, InputConfig, build_weights


class GoogLeNet:
    """torchvision GoogLeNet (BN variant), 1024-d features, 227 crops."""

    name = "googlenet"
    input_config = InputConfig(crop=227)

    @staticmethod
    def build(spec: ArchSpec, opt: argparse.Namespace) -> EmbeddingNet:
        def random_init() -> nn.Module:
            return torchvision.models.googlenet(
                weights=None, aux_logits=False, transform_input=True, init_weights=True
            )

        def pretrained_init() -> nn.Module:
            weights = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
            # torchvision loads these weights with the auxiliary heads, then drops them
            return torchvision.models.googlenet(weights=weights, transform_input=True)

        net = build_weights("googlenet", opt, random_init, pretrained_init)
        net.avgpool = GlobalPool(spec.pooling, keepdim=True)
        net.fc = nn.Identity()
        return EmbeddingNet(net, 1024, opt.embed_dim, spec, GoogLeNet.input_config)
