"""BN-Inception (Ioffe & Szegedy, ICML 2015) from ``pretrainedmodels`` (Cadene), as in the study.

Backbone: ``features`` (1024 channels) -> global pooling (average; average + max, summed, with
``_double``) -> ``last_linear`` (1024 -> embed_dim). Inputs are 227 crops, BGR, 0-255 with the
Caffe means (B 104, G 117, R 128) subtracted: :class:`~architectures.base.EmbeddingNet` does this
on the device from the loader's uint8 RGB images. The ImageNet weights are
``bn_inception-52deb4733.pth`` from ``data.lip6.fr``; offline, save that file and pass
``--pretrained_path``.

Only the model file of ``pretrainedmodels`` is loaded, on first use (importing the package imports
all of its 40-odd models and prints SyntaxWarnings on Python ≥ 3.12); those warnings are suppressed.
Deviation from the reference: ``--not_pretrained`` is honoured (the study always loaded weights).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import torch
from torch import nn

from architectures.base import (
    BNINCEPTION_INPUT,
    ArchSpec,
    EmbeddingNet,
    GlobalPool,
    build_weights,
    quiet_import,
)
from utilities.errors import ConfigError

WEIGHTS_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"


def _bninception_module() -> ModuleType:
    """pretrainedmodels' ``bninception.py``, loaded lazily on its own: the package is an optional,
    heavy dependency whose import would load every one of its models."""
    name = "_pretrainedmodels_bninception"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("pretrainedmodels")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("--arch bninception needs the 'pretrainedmodels' package")
    path = f"{next(iter(spec.submodule_search_locations))}/models/bninception.py"
    file_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(file_spec)
    quiet_import(lambda: file_spec.loader.exec_module(module))
    sys.modules[name] = module
    return module


def _features_class(module: ModuleType) -> type:
    """BN-Inception whose forward is ``features`` + global pooling; same parameter names as the
    original, so Cadene's weight file and this backbone's own state dicts load unchanged."""

    class BNInceptionFeatures(module.BNInception):
        def __init__(self, pooling: str) -> None:
            super().__init__(num_classes=1000)
            self.pool = GlobalPool(pooling)

        def forward(self, x):
            return self.pool(self.features(x))

    return BNInceptionFeatures


class BNInception(EmbeddingNet):
    """pretrainedmodels BN-Inception, 1024-d features, BGR 0-255 inputs, 227 crops."""

    name = "bninception"
    default_input_config = BNINCEPTION_INPUT
    pretrained_weights = "pretrainedmodels:bninception/imagenet"  # WEIGHTS_URL

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        cls = _features_class(_bninception_module())

        def pretrained_init() -> nn.Module:
            net = cls(spec.pooling)
            net.load_state_dict(torch.hub.load_state_dict_from_url(WEIGHTS_URL, map_location="cpu"))
            return net

        net = build_weights(
            self.name,
            lambda: cls(spec.pooling),
            pretrained_init,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
        )
        net.last_linear = nn.Identity()
        return net, 1024
