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
uncertainty (confidence)    ``erc_recall@k``, ``erc_mAP@R``,                       uncertainty
                            ``confidence_accuracy``, ``confidence_hist`` (array)
verification (pairs)        ``roc_auc``, ``tpr@x``, ``eer``, ``fnmr@x``            verification
                            (x a rate in (0, 1), e.g. ``tpr@1e-3``)
==========================  ====================================================  ==============

:func:`compute` evaluates a list of names on one split. The expensive parts are computed once in
an :class:`~metrics.context.EvalContext` (one exact ranking pass giving the rank of every
relevant item as deep as any metric needs, one seeded k-means with k = the classes of the split, one SVD, class statistics once), and
every metric is a cheap function of them. Each module documents its definitions (relevance,
denominators, self-exclusion, ties) and its deviations from the reference.

``backend="faiss"`` replaces the exact pass by a faiss kNN search to the depth the requested metrics
need (:mod:`metrics.faiss_search`): with ``index="flat"`` the same numbers (up to float32 near-ties
in faiss's own distance arithmetic) for every metric but ``mAP`` and ``mrr`` (refused by
:func:`check_faiss_request`); with an approximate ``index`` (``ivf``,
``hnsw``, ``ivfpq``) the results also hold ``search_recall@<k>``, the search's recall against exact
search. ``kmeans="faiss"`` clusters with ``faiss.Kmeans`` instead of :mod:`metrics.kmeans`.
"""

from __future__ import annotations

import re
import typing

import torch

from metrics import (
    clustering,
    distances,
    faiss_search,
    retrieval,
    scores,
    spectrum,
    uncertainty,
    verification,
)
from metrics.context import EvalContext
from metrics.ranking import import_faiss
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
    uncertainty.ERCRecall,
    uncertainty.ERCMAPatR,
    uncertainty.ConfidenceAccuracy,
    uncertainty.ConfidenceHist,
    verification.RocAuc,
    verification.TprAtFpr,
    verification.EER,
    verification.FnmrAtFmr,
):
    REGISTRY.add(_cls)


def parse(name: str):
    """``"e_recall@4"`` -> a metric object (clear error for unknown or malformed names).

    A metric class's keyword-only constructor takes at most one parameter (``k``, ``m``, ``mode``),
    written after the ``@``; an ``int`` parameter is converted here, and the constructor rejects a
    missing or malformed one with its own message."""
    family, _, param = name.partition("@")
    if name in ("mAP@R", "erc_mAP@R"):
        family, param = name, ""
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


def check_faiss_request(
    names: list[str], backend: str, index: str = "flat", *, index_params: dict | None = None
) -> None:
    """Raise a one-line :class:`ConfigError` (a ValueError) for a request the faiss search cannot
    serve, before any work: a metric that needs every rank (``mAP``, ``mrr``) with
    ``backend="faiss"``, an unknown index, a bad ``index_params`` entry, an approximate index
    without the faiss backend, or faiss not installed. Unknown metric names fail as in :func:`parse`."""
    try:
        faiss_search.check_index(index, index_params, backend)
        if backend == "faiss":
            exact = [name for name in dict.fromkeys(names) if getattr(parse(name), "exact_only", False)]
            if exact:
                verb = "needs" if len(exact) == 1 else "need"
                raise ValueError(
                    f"{' and '.join(exact)} {verb} the exact ranking pass: use --eval_backend auto, numba or torch"
                )
            import_faiss()
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def is_search_recall(key: str) -> bool:
    """Whether a result key is an approximate search's recall (``search_recall@k[_cosine]``)."""
    return key.startswith("search_recall@")


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
    index: str = "flat",
    index_params: dict | None = None,
    recall_sample: int = 1000,
    kmeans: str = "torch",
    timings: dict[str, float] | None = None,
    progress: typing.Callable[[str], None] | None = None,
    params: torch.Tensor | None = None,
    distribution: str = "dirac",
    score: str = "mean",
    confidence: torch.Tensor | None = None,
) -> dict[str, float | list[float]]:
    """Every metric in ``names`` on one split.

    ``embeddings`` (N, D), ``labels`` (N,); ``query_mask`` / ``gallery_mask`` (N,) bool select the
    query/gallery protocol (default: every sample, i.e. leave-one-out). ``backend`` (ranking pass): ``auto``
    (numba on CPU, torch on CUDA), ``numba`` (CPU only) or ``torch`` (CPU or CUDA), see
    :mod:`metrics.ranking`; or ``faiss``: a faiss kNN search to the depth the metrics need, with
    ``index`` ``flat`` (exact: the same numbers but at float32 near-ties), ``ivf``, ``hnsw`` or
    ``ivfpq`` (approximate; ``index_params``: nlist, nprobe, M, efSearch, efConstruction, m, refine
    -- each index reads its own and ignores the rest), see :mod:`metrics.faiss_search`. An approximate index adds
    ``search_recall@<k>`` (``..._cosine`` for a separate cosine search) to the results: its recall
    of the exact top-k on ``recall_sample`` seeded queries. ``kmeans``: ``torch`` (:mod:`metrics.kmeans`)
    or ``faiss`` (``faiss.Kmeans``). ``chunk``: query rows per distance block (default: ~16 MB
    blocks). ``timings``, if given, receives seconds per stage. ``progress``, if given, is called
    with each metric's name before it is computed (a progress bar). ``params`` (N, P): the
    embeddings' ``distribution`` parameters (``dirac``: pre-normalisation norms, ``gaussian``:
    log σ², ``vmf``: log κ); ``score``: what the retrieval metrics rank by, ``mean`` (the
    embeddings), ``mls`` (gaussian) or ``expected_cosine`` (vmf), see :mod:`metrics.scores`; a score
    that does not fit the distribution, or asked of the faiss backend, is a one-line ConfigError.
    ``confidence`` (N,): per-sample confidence, higher = more confident, for the uncertainty metrics
    (:mod:`metrics.uncertainty`; without it they raise ValueError before any work).
    """
    metrics = {name: parse(name) for name in dict.fromkeys(names)}
    check_faiss_request(list(metrics), backend, index, index_params=index_params)  # before any work
    if confidence is None and any(getattr(m, "needs_confidence", False) for m in metrics.values()):
        EvalContext.no_confidence()  # the uncertainty metrics' ValueError, before any work
    try:
        scores.check_score(score, distribution, backend, has_params=params is not None)
        if params is not None and embeddings.ndim == 2:  # a bad embeddings shape fails in EvalContext
            scores.check_params(torch.as_tensor(params), distribution, len(embeddings), embeddings.shape[1])
    except ValueError as err:
        raise ConfigError(str(err)) from None
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
        index=index,
        index_params=index_params,
        recall_sample=recall_sample,
        kmeans=kmeans,
        params=params,
        distribution=distribution,
        score=score,
        confidence=confidence,
    )
    ctx.request_ranks(max((m.ranks_needed(ctx) for m in metrics.values()), default=0))
    for m in metrics.values():  # the faiss search's depth; the exact pass skips what lies deeper
        if hasattr(m, "search_depth"):
            ctx.request_depth(None if m.exact_only else m.search_depth(ctx), m.view)
    results: dict[str, float | list[float]] = {}
    for name, metric in metrics.items():
        if progress is not None:
            progress(name)
        results[name] = metric(ctx)
    results.update(ctx.search_recall)
    if timings is not None:
        timings.update(ctx.timings)
    return results
