"""ResNet-18/34/50/101 (He et al., CVPR 2016) from torchvision, with ImageNet weights.

Backbone: conv1 … layer4 -> global pooling (average; average + max with ``_double``) -> ``last_linear``
(512 or 2048 -> embed_dim), the study's ResNet-50 head. Weights are torchvision's ``IMAGENET1K_V1``,
the original ImageNet training (ResNet-50: 76.1 % top-1, served today as ``resnet50-0676ba61.pth``);
the study loaded that model's earlier file ``resnet50-19c8e357.pth`` through ``pretrainedmodels``,
which ``--pretrained_path`` also accepts. ``--not_pretrained`` starts from random weights, ``--pretrained_path`` reads
a local state dict (torchvision's or this project's), and unreachable weights are one clear error.
Input: 224 crops, ImageNet normalisation.
"""

from __future__ import annotations

from torch import nn

from architectures.base import ArchSpec, EmbeddingNet, GlobalPool, build_weights

WEIGHTS = "IMAGENET1K_V1"  # torchvision's original ImageNet training


class _TorchvisionResNet(EmbeddingNet):
    depth = 50
    feature_dim = 2048

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        import torchvision.models  # lazy: seconds of CPU that --help and configuration errors skip

        builder = getattr(torchvision.models, self.name)
        weights = getattr(getattr(torchvision.models, f"ResNet{self.depth}_Weights"), WEIGHTS)
        net = build_weights(
            self.name,
            lambda: builder(weights=None),
            lambda: builder(weights=weights),
            pretrained=pretrained,
            pretrained_path=pretrained_path,
        )
        net.avgpool = GlobalPool(spec.pooling, keepdim=True)
        net.fc = nn.Identity()
        return net, self.feature_dim

    @classmethod
    def pretrained_weights_for(cls, spec: ArchSpec) -> str:
        return f"torchvision:ResNet{cls.depth}_Weights.{WEIGHTS}"


class ResNet18(_TorchvisionResNet):
    """torchvision ResNet-18 (512-d features)."""

    name, depth, feature_dim = "resnet18", 18, 512


class ResNet34(_TorchvisionResNet):
    """torchvision ResNet-34 (512-d features)."""

    name, depth, feature_dim = "resnet34", 34, 512


class ResNet50(_TorchvisionResNet):
    """torchvision ResNet-50 (2048-d features), the study's default backbone."""

    name, depth, feature_dim = "resnet50", 50, 2048


class ResNet101(_TorchvisionResNet):
    """torchvision ResNet-101 (2048-d features)."""

    name, depth, feature_dim = "resnet101", 101, 2048
