"""A small CNN for tiny images (the embedded ``digits`` dataset, toy data) that trains on a CPU.

Three 3×3 conv blocks (32, 64, 128 channels, BatchNorm, ReLU; max-pool after the second), global
average pooling -> 128 features -> ``last_linear``. There are no library (ImageNet) weights for
it: randomly initialised, or from a local file with ``--pretrained_path`` (a checkpoint of an
earlier smallcnn run, e.g. the trained mean network that PFE and SCF keep frozen); ~0.1 M
parameters. On image datasets it takes 32-pixel crops (eval: resize 36, centre crop 32), so
pipelines can be smoke-tested on a CPU.
"""

from __future__ import annotations

from torch import nn

from architectures.base import ArchSpec, EmbeddingNet, GlobalPool, InputConfig, build_weights


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(EmbeddingNet):
    """Small 3-block CNN for tiny images (CPU-friendly)."""

    name = "smallcnn"
    default_input_config = InputConfig(crop=32, resize=36)
    has_pretrained_weights = False  # no library weights; a local --pretrained_path file is loaded

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        def random_init() -> nn.Module:
            return nn.Sequential(
                *_block(3, 32), *_block(32, 64), nn.MaxPool2d(2), *_block(64, 128), GlobalPool(spec.pooling)
            )

        features = build_weights(
            self.name, random_init, None, pretrained=False, pretrained_path=pretrained_path
        )  # a local file only: there are no library weights to download
        return features, 128
