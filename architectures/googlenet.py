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

from torch import nn

from architectures.base import ArchSpec, EmbeddingNet, GlobalPool, InputConfig, build_weights


def _random_init() -> nn.Module:
    import torchvision.models  # lazy: seconds of CPU that --help and configuration errors skip

    return torchvision.models.googlenet(
        weights=None, aux_logits=False, transform_input=True, init_weights=True
    )


def _pretrained_init() -> nn.Module:
    import torchvision.models  # lazy: seconds of CPU that --help and configuration errors skip

    weights = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
    # torchvision loads these weights with the auxiliary heads, then drops them
    return torchvision.models.googlenet(weights=weights, transform_input=True)


class GoogLeNet(EmbeddingNet):
    """torchvision GoogLeNet (BN variant), 1024-d features, 227 crops."""

    name = "googlenet"
    default_input_config = InputConfig(crop=227)
    pretrained_weights = "torchvision:GoogLeNet_Weights.IMAGENET1K_V1"

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        net = build_weights(
            self.name, _random_init, _pretrained_init, pretrained=pretrained, pretrained_path=pretrained_path
        )
        net.avgpool = GlobalPool(spec.pooling, keepdim=True)
        net.fc = nn.Identity()
        return net, 1024
