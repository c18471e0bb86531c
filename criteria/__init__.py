"""Losses ("criteria"): one self-contained file per loss, plus the registries and ``select``.

Contract: ``criterion = select(name, opt, n_classes=C, batchminer=miner)``;
``loss = criterion(batch, labels)`` with ``batch`` (B, D) float on any device and ``labels`` (B,)
long; the result is a finite, differentiable scalar (0 with a graph when nothing is mined).
Each loss class has a keyword-only constructor: parameters with defaults are its hyperparameters
(one ``--loss_<name>_<param>`` flag each), parameters without are context (``batchminer``,
``n_classes``, ``embed_dim``, ``lr``, the network's learning rate that proxy losses multiply,
``seed``, which seeds a Monte-Carlo loss's generators).
Each class declares ``requires_miner``, the ``tuple_kinds`` it accepts from a miner and
``supports_xbm``; learnable parameters are exposed through ``param_groups()`` with their own
learning rates. ``--xbm_size M`` wraps a loss that supports it in a cross-batch memory
(criteria/xbm.py), the one entry of :data:`WRAPPERS`.

Each ``criteria/<loss>.py`` needs only torch and ``criteria/_common.py`` (relative import), so the
two files can be copied into another project and the loss built by hand.
"""

from __future__ import annotations

import argparse

from torch import nn

from utilities.errors import ConfigError
from utilities.registry import Registry

from . import (
    adacos,
    adaface,
    angular,
    arcface,
    circle,
    contrastive,
    cosface,
    curricularface,
    dsml,
    dul_cls,
    dul_reg,
    elasticface,
    fastap,
    hib,
    histogram,
    lifted,
    margin,
    multisimilarity,
    npair,
    pfe,
    proxyanchor,
    proxynca,
    quadruplet,
    scf,
    snr,
    softmax,
    softtriplet,
    spe,
    sphereface,
    subcenter_arcface,
    supcon,
    triplet,
    vmf_fl,
    vmf_loss,
)
from ._common import DIRAC
from .xbm import CrossBatchMemory

REGISTRY = Registry("loss", flag_prefix="loss")
for _cls in (
    adacos.AdaCosLoss,
    adaface.AdaFaceLoss,
    angular.AngularLoss,
    arcface.ArcFaceLoss,
    circle.CircleLoss,
    contrastive.ContrastiveLoss,
    cosface.CosFaceLoss,
    curricularface.CurricularFaceLoss,
    dsml.DSMLLoss,
    dul_cls.DULClsLoss,
    dul_reg.DULRegLoss,
    elasticface.ElasticFaceLoss,
    fastap.FastAPLoss,
    hib.HIBLoss,
    histogram.HistogramLoss,
    lifted.LiftedLoss,
    margin.MarginLoss,
    multisimilarity.MultiSimilarityLoss,
    npair.NpairLoss,
    pfe.PFELoss,
    proxyanchor.ProxyAnchorLoss,
    proxynca.ProxyNCALoss,
    quadruplet.QuadrupletLoss,
    scf.SCFLoss,
    snr.SnrLoss,
    softmax.SoftmaxLoss,
    softtriplet.SoftTripleLoss,
    spe.SPELoss,
    sphereface.SphereFaceLoss,
    subcenter_arcface.SubCenterArcFaceLoss,
    supcon.SupConLoss,
    triplet.TripletLoss,
    vmf_fl.VMFFLLoss,
    vmf_loss.VMFLoss,
):
    REGISTRY.add(_cls)

# Loss wrappers: their flags carry no prefix (--xbm_size, --xbm_weight, --xbm_start_iteration).
WRAPPERS = Registry("loss wrapper", flag_prefix="")
WRAPPERS.add(CrossBatchMemory)


def requires_miner(name: str) -> bool:
    return REGISTRY.get(name).requires_miner


def distribution(name: str) -> str:
    """What loss ``name`` trains: ``dirac`` (a point embedding) or the ``gaussian`` / ``vmf``
    distribution it expects the network to emit (packed as in criteria/_common.py)."""
    return getattr(REGISTRY.get(name), "distribution", DIRAC)


def frozen_mean(name: str) -> bool:
    """Whether loss ``name`` trains only the uncertainty of a frozen mean network (PFE, SCF): the
    backbone and the mean head are then built frozen (``architectures.select(freeze_mean=True)``)."""
    return bool(getattr(REGISTRY.get(name), "frozen_mean", False))


def select(name: str, opt: argparse.Namespace, *, n_classes: int, batchminer=None) -> nn.Module:
    """Build loss ``name`` for ``n_classes`` training classes, checking that ``batchminer``
    produces a tuple kind the loss accepts.

    ``opt.embed_dim`` and ``opt.lr`` are passed as context; a loss that needs no miner is built
    without one (a miner passed anyway is ignored). With ``opt.xbm_size > 0`` the loss is wrapped
    in a :class:`CrossBatchMemory`.
    """
    cls = REGISTRY.get(name)
    xbm = opt.xbm_size > 0
    if xbm and not cls.supports_xbm:
        supported = [n for n, c in REGISTRY if c.supports_xbm]
        raise ConfigError(
            f"--xbm_size needs a pair- or tuple-based loss; '{name}' is not one "
            f"(supported: {', '.join(supported)})"
        )
    if cls.requires_miner:
        accepted = " or ".join(cls.tuple_kinds)
        if batchminer is None:
            raise ConfigError(f"loss '{name}' needs a batch miner (--batch_mining)")
        if batchminer.tuple_kind not in cls.tuple_kinds:
            raise ConfigError(
                f"loss '{name}' consumes {accepted}, but miner '{batchminer.name}' produces "
                f"{batchminer.tuple_kind}; pick a miner that produces {accepted}"
            )
    criterion = REGISTRY.build(
        name,
        opt,
        n_classes=n_classes,
        embed_dim=opt.embed_dim,
        lr=opt.lr,
        batchminer=batchminer,
        seed=opt.seed,
    )
    if xbm:
        criterion = WRAPPERS.build("xbm", opt, criterion=criterion, embed_dim=opt.embed_dim)
    return criterion
