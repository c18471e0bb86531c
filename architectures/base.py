"""The embedding network: a backbone's pooled features -> ``last_linear`` -> optional L2 norm.

Architecture names keep the reference study's form ``<backbone>[_<modifier>...]``, e.g.
``resnet50_frozen_normalize``; :func:`parse_arch` turns them into explicit fields instead of
substring tests:

* ``frozen``: BatchNorm running statistics are frozen (BN layers stay in eval mode in training;
  their affine parameters still learn, as in the study);
* ``normalize``: the output embedding is L2-normalised.

Unknown modifiers are an error (the reference silently ignored them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from utilities.errors import ConfigError

KNOWN_MODIFIERS = ("frozen", "normalize")


@dataclass(frozen=True)
class ArchSpec:
    backbone: str
    freeze_bn: bool = False
    normalize: bool = False


def parse_arch(arch: str, known_modifiers: tuple[str, ...] = KNOWN_MODIFIERS) -> ArchSpec:
    backbone, *mods = arch.split("_")
    unknown = [m for m in mods if m not in known_modifiers]
    if unknown:
        raise ConfigError(
            f"unknown modifier(s) {unknown} in --arch {arch}; modifiers are: {', '.join(known_modifiers)}"
        )
    return ArchSpec(backbone=backbone, freeze_bn="frozen" in mods, normalize="normalize" in mods)


class EmbeddingNet(nn.Module):
    """``features`` (B, F) from the backbone, then ``last_linear`` (F -> embed_dim)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int, spec: ArchSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.last_linear = nn.Linear(feature_dim, embed_dim)
        self.spec = spec
        self.normalize = spec.normalize
        self.embed_dim = embed_dim

    def train(self, mode: bool = True) -> EmbeddingNet:
        super().train(mode)
        if self.spec.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.last_linear(self.backbone(x))
        return nn.functional.normalize(z, dim=-1) if self.normalize else z
