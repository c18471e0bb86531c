"""Losses ("criteria"): one self-contained file per loss, plus this registry.

Contract (see DESIGN.md §3): ``criterion = select(name, opt, batchminer)``;
``loss = criterion(batch, labels)`` with ``batch`` (B, D) float on any device and ``labels`` (B,)
long; the result is a finite, differentiable scalar (0 with a graph when nothing is mined).
Each class declares ``requires_miner`` and the ``tuple_kind`` it consumes; learnable parameters
are exposed through ``param_groups()`` with their own learning rates. ``--xbm_size M`` wraps a
criterion that supports it in a cross-batch memory (criteria/xbm.py).
"""

from __future__ import annotations

import argparse
import dataclasses

from torch import nn

from criteria import (
    adacos,
    adaface,
    angular,
    arcface,
    circle,
    contrastive,
    cosface,
    curricularface,
    elasticface,
    fastap,
    histogram,
    lifted,
    margin,
    multisimilarity,
    npair,
    proxyanchor,
    proxynca,
    quadruplet,
    snr,
    softmax,
    softtriplet,
    sphereface,
    subcenter_arcface,
    supcon,
    triplet,
)
from criteria.xbm import CrossBatchMemory
from utilities.errors import ConfigError
from utilities.registry import Registry, _argparse_kwargs


@dataclasses.dataclass
class XbmHparams:
    """Cross-batch memory flags (global: they apply to whichever loss is selected)."""

    size: int = dataclasses.field(
        default=0, metadata={"flag": "xbm_size", "help": "cross-batch memory size M (0 = off)"}
    )
    weight: float = dataclasses.field(
        default=1.0, metadata={"flag": "xbm_weight", "help": "weight of the memory term"}
    )
    start_iteration: int = dataclasses.field(
        default=0,
        metadata={"flag": "xbm_start_iteration", "help": "training steps before the memory is used"},
    )


class _CriteriaRegistry(Registry):
    """The loss registry; its flags also include the cross-batch memory group."""

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        super().add_args(parser)
        group = parser.add_argument_group("cross-batch memory (criteria/xbm.py)", CrossBatchMemory.__doc__)
        for field in dataclasses.fields(XbmHparams):
            hint = {"int": int, "float": float}[field.type] if isinstance(field.type, str) else field.type
            group.add_argument(f"--{field.metadata['flag']}", **_argparse_kwargs(field, hint, field.default))


REGISTRY = _CriteriaRegistry("loss", flag_prefix="loss")
for _cls in (
    adacos.AdaCosLoss,
    adaface.AdaFaceLoss,
    angular.AngularLoss,
    arcface.ArcFaceLoss,
    circle.CircleLoss,
    contrastive.ContrastiveLoss,
    cosface.CosFaceLoss,
    curricularface.CurricularFaceLoss,
    elasticface.ElasticFaceLoss,
    fastap.FastAPLoss,
    histogram.HistogramLoss,
    lifted.LiftedLoss,
    margin.MarginLoss,
    multisimilarity.MultiSimilarityLoss,
    npair.NpairLoss,
    proxyanchor.ProxyAnchorLoss,
    proxynca.ProxyNCALoss,
    quadruplet.QuadrupletLoss,
    snr.SnrLoss,
    softmax.SoftmaxLoss,
    softtriplet.SoftTripleLoss,
    sphereface.SphereFaceLoss,
    subcenter_arcface.SubCenterArcFaceLoss,
    supcon.SupConLoss,
    triplet.TripletLoss,
):
    REGISTRY.add(_cls)


def requires_miner(name: str) -> bool:
    return bool(getattr(REGISTRY.get(name), "requires_miner", False))


def select(name: str, opt: argparse.Namespace, batchminer=None) -> nn.Module:
    """Build loss ``name``; checks that ``batchminer`` produces the tuple kind the loss consumes.

    A loss that needs no miner is built without one (a miner passed anyway is ignored). With
    ``opt.xbm_size > 0`` the loss is wrapped in a :class:`CrossBatchMemory`.
    """
    cls = REGISTRY.get(name)
    xbm_size = int(getattr(opt, "xbm_size", 0) or 0)
    if xbm_size > 0 and not getattr(cls, "supports_xbm", False):
        supported = [n for n, c in REGISTRY if getattr(c, "supports_xbm", False)]
        raise ConfigError(
            f"--xbm_size needs a pair- or tuple-based loss; '{name}' is not one "
            f"(supported: {', '.join(supported)})"
        )
    if getattr(cls, "requires_miner", False):
        if batchminer is None:
            raise ConfigError(f"loss '{name}' needs a batch miner (--batch_mining)")
        if batchminer.tuple_kind != cls.tuple_kind:
            raise ConfigError(
                f"loss '{name}' consumes {cls.tuple_kind}, but miner '{batchminer.name}' produces "
                f"{batchminer.tuple_kind}; pick a miner that produces {cls.tuple_kind}"
            )
        criterion = REGISTRY.build(name, opt, batchminer=batchminer)
    else:
        criterion = REGISTRY.build(name, opt)
    if xbm_size > 0:
        criterion = CrossBatchMemory(
            criterion,
            xbm_size,
            int(getattr(opt, "embed_dim", 128)),
            weight=float(getattr(opt, "xbm_weight", 1.0)),
            start_iteration=int(getattr(opt, "xbm_start_iteration", 0)),
        )
    return criterion
