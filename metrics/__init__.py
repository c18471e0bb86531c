"""Retrieval and clustering metrics over shared, computed-once neighbour / cluster results.

Names follow the reference study: ``<family>[@<param>]``, e.g. ``e_recall@4``, ``nmi``, ``f1``,
``mAP@R``. :func:`compute` evaluates a list of names on one split's embeddings. The expensive parts
(one exact k-nearest-neighbour search with k = the largest k any requested metric needs; one
k-means with k = the number of classes *of that split*) are computed once in an
:class:`~metrics.context.EvalContext` and every metric is a cheap function of them.
"""

from __future__ import annotations

import torch

from metrics import clustering, retrieval
from metrics.context import EvalContext
from utilities.errors import ConfigError
from utilities.registry import Registry

REGISTRY = Registry("metric", flag_prefix="metric")
for _cls in (retrieval.Recall, retrieval.MAPatR, clustering.NMI, clustering.F1):
    REGISTRY.add(_cls)


def parse(name: str):
    """``"e_recall@4"`` -> a metric object (clear error for unknown or malformed names)."""
    family, _, param = name.partition("@")
    if family == "mAP" and param == "R":
        family, param = "mAP@R", ""
    cls = REGISTRY.get(family)
    try:
        return cls(param or None)
    except ValueError as err:
        raise ConfigError(f"bad metric '{name}': {err}") from None


def compute(
    names: list[str],
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Every metric in ``names`` on one split. ``embeddings`` (N, D), ``labels`` (N,)."""
    metrics = {name: parse(name) for name in names}
    ctx = EvalContext(embeddings, labels, seed=seed, device=device)
    ctx.request_neighbours(max((m.k_needed(ctx) for m in metrics.values()), default=0))
    return {name: metric(ctx) for name, metric in metrics.items()}
