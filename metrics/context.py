"""The shared, computed-once results that all metrics of one split read from.

An :class:`EvalContext` holds one split's embeddings (N, D), labels (N,) and optional boolean
``query_mask`` / ``gallery_mask`` (query/gallery protocol, e.g. In-Shop). Without masks every
sample is a query against all *other* samples (leave-one-out). Everything expensive is computed
lazily, at most once, on ``device``:

* ``ranks(view)``: one exact ranking pass per view (``"euclidean"`` on the raw embeddings,
  ``"cosine"`` on L2-normalised ones; when the embeddings are already unit-norm both views share
  one pass): the sorted ranks of every query's relevant gallery items, as many as the most
  demanding requested metric needs; see :mod:`metrics.ranking`. Every retrieval metric is a
  function of these ranks. ``score`` other than ``mean`` (``mls``, ``expected_cosine``: see
  :mod:`metrics.scores`) ranks by the embeddings' distribution ``params`` instead: every view is
  then the one ``"score"`` pass (``c_recall@k`` = ``e_recall@k``); clustering, spectrum and class
  statistics keep using the means. With ``backend="faiss"`` the same ranks come from a faiss kNN search to
  the depth requested with :meth:`request_depth` (exact for ``index="flat"``, approximate for
  ``ivf``/``hnsw``/``ivfpq``, whose recall against exact search lands in ``search_recall``); see
  :mod:`metrics.faiss_search`.
* ``n_relevant``: per query, the number of gallery items of its class other than itself.
* ``clusters(view)``: one seeded k-means with k = classes of this split (see :mod:`metrics.kmeans`;
  ``kmeans="faiss"``: ``faiss.Kmeans``).
* ``spectrum``: the D (or N, if smaller) singular values of the un-centred embedding matrix,
  computed once in float64 from the D×D Gram matrix, identical on CPU and CUDA.
* ``class_stats``: per-class counts and sums of L2-normalised embeddings (for ``dists@*``).
* ``confidence`` (optional, (N,) float64): one confidence per sample, higher = more confident (the
  embedding norm, or a probabilistic embedding's concentration), read by the uncertainty metrics;
  ``query_confidence`` is its query-side part. :meth:`shared` computes any other per-split value
  once (the verification pairs, per-query values shared by several metrics).

Clustering, spectrum and class statistics use *all* samples of the split (queries and gallery).
``timings`` records the seconds spent in each stage.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable
from contextlib import contextmanager
from functools import cached_property

import torch

from metrics import faiss_search, ranking, scores
from metrics import kmeans as _kmeans
from metrics._threads import stage_threads

NORM_TOL = 1e-4  # rows within this of unit norm count as normalised (cosine view = Euclidean view)


class EvalContext:
    """Embeddings + labels of one split and the lazily computed shared results."""

    def __init__(
        self,
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
        confidence: torch.Tensor | None = None,
        params: torch.Tensor | None = None,
        distribution: str = "dirac",
        score: str = "mean",
    ) -> None:
        self.device = torch.device(device)
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got shape {tuple(emb.shape)}")
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or len(labels) != len(emb):
            raise ValueError(f"labels must be (N,) with N = {len(emb)}, got shape {tuple(labels.shape)}")
        if len(emb) == 0:
            raise ValueError("cannot evaluate an empty split")
        self.embeddings = emb.to(self.device, torch.float32)
        if not torch.isfinite(self.embeddings).all():
            raise ValueError("embeddings contain NaN or inf (diverged training?)")
        self.labels = labels.to(self.device).long()
        n = len(self.labels)
        self.query_idx = self._mask_idx(query_mask, n, "query_mask")
        self.gallery_idx = self._mask_idx(gallery_mask, n, "gallery_mask")
        if len(self.query_idx) == 0 or len(self.gallery_idx) == 0:
            raise ValueError("the query and the gallery set must both be non-empty")
        self.seed = seed
        ranking.check_backend(backend, self.device)  # a bad name or device fails here, early
        faiss_search.check_index(index, index_params, backend)
        _kmeans.check_implementation(kmeans)
        if isinstance(recall_sample, bool) or not isinstance(recall_sample, int) or recall_sample < 1:
            raise ValueError(f"recall_sample must be a positive integer, got {recall_sample!r}")
        self.backend = backend
        self.chunk = chunk
        self.kmeans_iter = kmeans_iter
        self.index = index
        self.index_params = dict(index_params or {})
        self.recall_sample = recall_sample
        self.kmeans = kmeans
        scores.check_score(score, distribution, backend, has_params=params is not None)
        if params is not None:
            params = torch.as_tensor(params)
            scores.check_params(params, distribution, n, self.embeddings.shape[1])
            params = params.to(self.device, torch.float32)
        self.params = params  # (N, P) distribution parameters (metrics.scores), or None
        self.distribution = distribution
        self.score = score
        self.timings: dict[str, float] = {}
        self.search_recall: dict[str, float] = {}  # approximate faiss index: search_recall@k -> value
        self._width = 0
        self._depth: dict[str, int | None] = {}
        self._ranks: dict[str, torch.Tensor] = {}
        self._clusters: dict[str, torch.Tensor] = {}
        self._shared: dict[str, object] = {}
        self.confidence = None if confidence is None else self._check_confidence(confidence, n)

    def _check_confidence(self, confidence: torch.Tensor, n: int) -> torch.Tensor:
        conf = torch.as_tensor(confidence)
        if conf.shape != (n,):
            raise ValueError(f"confidence must be (N,) with N = {n}, got shape {tuple(conf.shape)}")
        conf = conf.to(self.device, torch.float64)
        if not torch.isfinite(conf).all():
            raise ValueError("confidence contains NaN or inf")
        return conf

    def _mask_idx(self, mask: torch.Tensor | None, n: int, what: str) -> torch.Tensor:
        if mask is None:
            return torch.arange(n, device=self.device)
        mask = torch.as_tensor(mask).to(self.device)
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise ValueError(f"{what} must be a boolean tensor of shape ({n},)")
        return torch.nonzero(mask).flatten()

    @contextmanager
    def _timed(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    # -- sizes and class structure ----------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.labels)

    @cached_property
    def n_classes(self) -> int:
        return int(torch.unique(self.labels).numel())

    @cached_property
    def query_labels(self) -> torch.Tensor:
        return self.labels[self.query_idx]

    @cached_property
    def n_relevant(self) -> torch.Tensor:
        """(Nq,) gallery items sharing the query's label, the query itself not counted."""
        _, inv = torch.unique(self.labels, return_inverse=True)
        per_class = torch.bincount(inv[self.gallery_idx], minlength=int(inv.max()) + 1)
        in_gallery = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        in_gallery[self.gallery_idx] = True
        return per_class[inv[self.query_idx]] - in_gallery[self.query_idx].long()

    @cached_property
    def n_candidates(self) -> torch.Tensor:
        """(Nq,) gallery items a query can retrieve (the gallery minus itself)."""
        in_gallery = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        in_gallery[self.gallery_idx] = True
        return len(self.gallery_idx) - in_gallery[self.query_idx].long()

    @staticmethod
    def no_confidence() -> typing.NoReturn:
        raise ValueError(
            "the uncertainty metrics need per-item confidence (main.py provides the embedding norm "
            "or the distribution's concentration); pass confidence= to metrics.compute"
        )

    def require_confidence(self) -> torch.Tensor:
        """(N,) float64 ``confidence``; :meth:`no_confidence`'s ValueError where none was given."""
        if self.confidence is None:
            self.no_confidence()
        return self.confidence

    @cached_property
    def query_confidence(self) -> torch.Tensor:
        """(Nq,) float64 confidence of each query (:meth:`require_confidence`'s error without it)."""
        return self.require_confidence()[self.query_idx]

    def shared(self, key: str, compute: Callable[[], object], stage: str | None = None) -> object:
        """``compute()`` once per split under ``key`` (the result of several metrics' common work),
        timed as ``stage`` if given."""
        if key not in self._shared:
            if stage is None:
                self._shared[key] = compute()
            else:
                with self._timed(stage):
                    self._shared[key] = compute()
        return self._shared[key]

    @cached_property
    def max_relevant(self) -> int:
        return int(self.n_relevant.max())

    @cached_property
    def normalized(self) -> torch.Tensor:

        with stage_threads(self.embeddings.numel(), self.device):
            return torch.nn.functional.normalize(self.embeddings, dim=1)

    @cached_property
    def is_unit_norm(self) -> bool:

        with stage_threads(self.embeddings.numel(), self.device):
            norms = self.embeddings.norm(dim=1)
            return bool(((norms - 1).abs() <= NORM_TOL).all())

    def view(self, name: str) -> str:
        """The search space of a retrieval view; ``cosine`` collapses to ``euclidean`` on unit-norm
        rows, and under a distribution score every view is ``score`` (one pass ranks by it)."""
        if self.score != "mean":
            return "score"
        return "euclidean" if name == "cosine" and self.is_unit_norm else name

    def _features(self, view: str) -> torch.Tensor:
        return self.normalized if view == "cosine" else self.embeddings  # "score": the means

    # -- ranks of the relevant items ---------------------------------------------------------------
    def request_ranks(self, width: int) -> None:
        """Ask for the first ``width`` relevant ranks per query; call before the first :meth:`ranks`."""
        if self._ranks and min(width, self.max_relevant) > self.width:
            raise RuntimeError("request all ranks before the first ranking pass")
        self._width = max(self._width, width)

    def request_depth(self, depth: int | None, view: str = "euclidean") -> None:
        """The deepest rank a requested metric compares with on ``view`` (None: every rank, as
        ``mAP`` needs); call before the first :meth:`ranks` of that view. ``backend="faiss"`` searches
        that deep (and needs a number). The exact pass stores relevant items ranked deeper as
        :func:`metrics.ranking.missing`, which lets it skip most of a wide gallery; without a
        request it keeps every rank."""
        view = self.view(view)
        if view in self._ranks:
            done = self._depth.get(view)  # None: every rank was kept
            if done is not None and (depth is None or depth > done):
                raise RuntimeError("request the search depth before the first search")
            return
        old = self._depth.get(view, 0)
        self._depth[view] = None if depth is None or old is None else max(old, int(depth))

    @property
    def width(self) -> int:
        """Columns of :meth:`ranks`: the widest request, capped by the largest R."""
        return min(self._width, self.max_relevant)

    def ranks(self, view: str = "euclidean") -> torch.Tensor:
        """(Nq, width) int64: sorted 1-based ranks of each query's relevant gallery items in its
        ranking of the gallery (self excluded by index, ties by index); columns beyond the
        query's R hold :data:`metrics.ranking.PAD`. One exact pass per view, see :mod:`metrics.ranking`
        (with a :meth:`request_depth`, ranks deeper than it read :func:`metrics.ranking.missing`);
        ``backend="faiss"``: one search per view to its requested depth, relevant items beyond it at
        :func:`metrics.ranking.missing` (see :mod:`metrics.faiss_search`)."""
        view = self.view(view)
        if view not in self._ranks and self.backend == "faiss":
            if self._depth.get(view) is None:
                raise RuntimeError(f"backend='faiss': request_depth(k, {view!r}) before the first ranks()")
            self._ranks[view], recall = faiss_search.knn_ranks(
                self._features(view),
                self.labels,
                self.query_idx,
                self.gallery_idx,
                self.width,
                self._depth[view],
                index=self.index,
                index_params=self.index_params,
                seed=self.seed,
                recall_sample=self.recall_sample,
                timed=self._timed,
            )
            if recall is not None:
                depth, value = recall
                self.search_recall[f"search_recall@{depth}" + ("_cosine" if view == "cosine" else "")] = value
        if view not in self._ranks:
            with self._timed("ranking"):
                self._ranks[view] = ranking.relevant_ranks(
                    self._features(view),
                    self.labels,
                    self.query_idx,
                    self.gallery_idx,
                    self.width,
                    backend=self.backend,
                    chunk=self.chunk,
                    score=self.score,
                    params=self.params,
                    depth=self._depth.get(view),
                )
        return self._ranks[view]

    # -- clustering ---------------------------------------------------------------------------------
    def clusters(self, view: str = "euclidean") -> torch.Tensor:
        """(N,) k-means assignment of every sample, k = classes of this split."""
        if view not in self._clusters:  # Euclidean and spherical k-means differ even on unit rows
            with self._timed("kmeans"):
                if self.kmeans == "faiss":
                    run = faiss_search.kmeans
                    extra = {}
                else:
                    run = _kmeans.kmeans
                    # the nearest-centroid pass: the ranking backend's CPU kernel where there is one
                    extra = {
                        "chunk": self.chunk,
                        "backend": "auto" if self.backend == "faiss" else self.backend,
                    }
                self._clusters[view] = run(
                    self.embeddings,
                    self.n_classes,
                    seed=self.seed,
                    niter=self.kmeans_iter,
                    spherical=view == "cosine",
                    **extra,
                )
        return self._clusters[view]

    # -- spectrum and class statistics ---------------------------------------------------------------
    @cached_property
    def spectrum(self) -> torch.Tensor:
        """Singular values (descending, float64) of the un-centred (N, D) embedding matrix."""

        with self._timed("svd"):
            x = self.embeddings.double()
            n, d = x.shape
            with stage_threads(n * d * d, self.device):
                gram = x.T @ x
            # LAPACK makes many small parallel BLAS calls here: a D×D problem stays on one thread
            with stage_threads(d**3, self.device):
                eig = torch.linalg.eigvalsh(gram).clamp_min(0).flip(0)
            return eig[: min(x.shape)].sqrt()

    @cached_property
    def class_stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(C,) class sizes, (C, D) sums of the L2-normalised members and (C,) sums of their |z|²."""

        with self._timed("class_stats"), stage_threads(self.embeddings.numel(), self.device):
            _, inv = torch.unique(self.labels, return_inverse=True)
            counts = torch.bincount(inv)
            z = self.normalized.double()
            sums = torch.zeros(len(counts), z.shape[1], dtype=torch.float64, device=self.device)
            sums.index_add_(0, inv, z)
            sq = torch.zeros(len(counts), dtype=torch.float64, device=self.device)
            sq.index_add_(0, inv, z.pow(2).sum(1))
            return counts, sums, sq
