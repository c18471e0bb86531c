"""Retrieval, clustering and embedding-space metrics over shared, computed-once results.

Names follow the reference study: ``<family>[@<param>]``:

==========================  ====================================================  ==============
family                      names                                                 module
==========================  ====================================================  ==============
Recall@k                    ``e_recall@k``, ``c_recall@k``                         retrieval
precision                   ``precision@k``, ``r_precision``                       retrieval
MAP                         ``mAP@R``, ``mAP_c``, ``mAP_1000``, ``mAP_lim``,       retrieval
                            ``mAP``, ``mrr``
clustering                  ``nmi``, ``c_nmi``, ``ami``, ``f1``, ``c_f1``          clustering
density                     ``dists@intra``, ``dists@inter``,                      distances
                            ``dists@intra_over_inter``
spectrum                    ``rho_spectrum@m`` (m = 0: the array)                  spectrum
==========================  ====================================================  ==============

:func:`compute` evaluates a list of names on one split. The expensive parts are computed once in
an :class:`~metrics.context.EvalContext` (one exact ranking pass giving the rank of every
relevant item as deep as any metric needs, one seeded k-means with k = the classes of the split, one SVD, class statistics once), and
every metric is a cheap function of them. Each module documents its definitions (relevance,
denominators, self-exclusion, ties) and its deviations from the reference.
"""

from __future__ import annotations

import re
import typing

import torch

from metrics import clustering, distances, retrieval, spectrum
from metrics.context import EvalContext
from utilities.errors import ConfigError
from utilities.registry import Registry

REGISTRY = Registry("metric", flag_prefix="metric")
for _cls in (
    retrieval.Recall,
    retrieval.CosineRecall,
    retrieval.Precision,
    retrieval.RPrecision,
    retrieval.MAPatR,
    retrieval.ClassMAPatR,
    retrieval.MAPatK,
    retrieval.MAPlim,
    retrieval.MAP,
    retrieval.MRR,
    clustering.NMI,
    clustering.CosineNMI,
    clustering.AMI,
    clustering.F1,
    clustering.CosineF1,
    distances.Dists,
    spectrum.RhoSpectrum,
):
    REGISTRY.add(_cls)


def parse(name: str):
    """``"e_recall@4"`` -> a metric object (clear error for unknown or malformed names).

    A metric class's keyword-only constructor takes at most one parameter (``k``, ``m``, ``mode``),
    written after the ``@``; an ``int`` parameter is converted here, and the constructor rejects a
    missing or malformed one with its own message."""
    family, _, param = name.partition("@")
    if name == "mAP@R":
        family, param = "mAP@R", ""
    if family not in REGISTRY:
        raise ConfigError(
            f"unknown metric '{name}'; families: {', '.join(REGISTRY.names())} "
            "(e.g. e_recall@1, precision@1, mAP@R, dists@intra, rho_spectrum@2)"
        )
    cls = REGISTRY.get(family)
    try:
        (*expected,) = REGISTRY.context(family)
        if not expected:
            if param:
                raise ValueError(f"{family} takes no parameter")
            return cls()
        (key,) = expected
        value: object = param or None
        if typing.get_type_hints(cls.__init__).get(key) is int and param and re.fullmatch(r"-?\d+", param):
            value = int(param)
        return cls(**{key: value})
    except ValueError as err:
        raise ConfigError(f"bad metric '{name}': {err}") from None


def validate(names: list[str]) -> None:
    """Raise :class:`ConfigError` early for any unknown or malformed metric name."""
    for name in names:
        parse(name)


def returns_array(name: str) -> bool:
    """Whether the metric ``name`` yields an array (``rho_spectrum@0``), not a scalar."""
    return bool(getattr(parse(name), "returns_array", False))


def is_array(value: object) -> bool:
    """Array-valued metric results (``rho_spectrum@0``) are lists; everything else is a float."""
    return isinstance(value, (list, tuple))


def compute(
    names: list[str],
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    query_mask: torch.Tensor | None = None,
    gallery_mask: torch.Tensor | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    chunk: int | None = None,
    kmeans_iter: int = 20,
    timings: dict[str, float] | None = None,
) -> dict[str, float | list[float]]:
    """Every metric in ``names`` on one split.

    ``embeddings`` (N, D), ``labels`` (N,); ``query_mask`` / ``gallery_mask`` (N,) bool select the
    query/gallery protocol (default: every sample, i.e. leave-one-out). ``backend`` (ranking pass): ``auto``
    (numba on CPU, torch on CUDA), ``numba`` (CPU only) or ``torch`` (CPU or CUDA), see
    :mod:`metrics.ranking`. ``chunk``: query rows per distance block (default: ~16 MB blocks). ``timings``, if given, receives seconds per stage.
    """
    metrics = {name: parse(name) for name in dict.fromkeys(names)}
    ctx = EvalContext(
        embeddings,
        labels,
        query_mask=query_mask,
        gallery_mask=gallery_mask,
        seed=seed,
        device=device,
        backend=backend,
        chunk=chunk,
        kmeans_iter=kmeans_iter,
    )
    ctx.request_ranks(max((m.ranks_needed(ctx) for m in metrics.values()), default=0))
    results = {name: metric(ctx) for name, metric in metrics.items()}
    if timings is not None:
        timings.update(ctx.timings)
    return results
