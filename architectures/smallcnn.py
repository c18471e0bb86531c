"""A small CNN for tiny images (the embedded ``digits`` dataset, toy data) that trains on a CPU.

Three 3×3 conv blocks (32, 64, 128 channels, BatchNorm, ReLU; max-pool after the second), global
average pooling -> 128 features -> ``last_linear``. Always randomly initialised (there are no
pretrained weights for it); ~0.1 M parameters.
"""

from __future__ import annotations

import argparse

from torch import nn

from architectures.base import ArchSpec, EmbeddingNet


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN:
    """Small 3-block CNN for tiny images (CPU-friendly)."""

    name = "smallcnn"

    @staticmethod
    def build(spec: ArchSpec, opt: argparse.Namespace) -> EmbeddingNet:
        features = nn.Sequential(
            *_block(3, 32), *_block(32, 64), nn.MaxPool2d(2), *_block(64, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        return EmbeddingNet(features, 128, opt.embed_dim, spec)
