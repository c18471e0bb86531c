"""Confidence intervals and method comparisons for the result tables (``Result_Evaluations.py``).

Flags (of Result_Evaluations.py, not main.py): --ci, --alpha, --bootstrap, --bootstrap_seed, --test,
--query_bootstrap. Everything here is numpy/scipy on numbers already measured,
except the query bootstrap, which makes one exact ranking pass (:mod:`metrics`) over saved
embeddings.

**Intervals over seeds** (``x_1 … x_n``: one metric of the n seeds of one method; level 1 − α):

* ``t``: ``x̄ ± t_{1−α/2, n−1} · s / √n`` with the sample standard deviation ``s`` (ddof = 1),
  as ``scipy.stats.t.interval``. Exact when the seed-to-seed variation is normal; with 3–5 seeds
  the t quantile (4.30 for n = 3, 2.78 for n = 5) makes it wide, honestly so.
* ``bootstrap``: percentile bootstrap of the mean: B resamples of the n seeds with replacement
  from ``numpy.random.default_rng(seed)``, then the α/2 and 1 − α/2 quantiles (linear
  interpolation) of the B resample means. These are the draws and quantiles of
  ``scipy.stats.bootstrap(method="percentile")`` given the same generator, so the numbers are
  equal. No normality assumption, but with few seeds it is too narrow (it never leaves the range
  of the seeds; n = 2 gives about [x_min, x_max]).

n = 1 has no interval (NaN).

**Comparison with the best method** (per dataset, protocol and higher-is-better metric; the best
is the highest mean): a two-sided p-value for "this method and the best have the same mean":

* ``paired_t``: ``scipy.stats.ttest_rel`` on the values of the common seeds. A seed fixes the
  initialisation and the batch order of both methods, so pairing removes that shared variation.
* ``wilcoxon``: ``scipy.stats.wilcoxon`` (signed ranks of the same pairs; zero differences are
  dropped; exact null distribution for small n). Its smallest two-sided p with n pairs is
  2 / 2^n: 0.0625 for 5 seeds, so at α = 0.05 it cannot reject anything below 6 seeds.
* ``welch``: ``scipy.stats.ttest_ind(equal_var=False)``, for methods run on different seeds.
* ``auto`` (the default): ``paired_t`` when the two methods have the same seeds, else ``welch``;
  ``paired_t`` and ``wilcoxon`` fall back to ``welch`` the same way. Each p-value comes with the
  test actually used.

Two-sided, because the best is picked after seeing the means; no correction for multiple
comparisons (each method is compared once, with the best). Edge cases, decided before scipy is
called so that it prints no precision warnings: fewer than 2 values on either side (or fewer than
2 common seeds) → no test (p NaN, test ``"n=1"``); identical values (all paired differences 0,
up to float noise, Wilcoxon included) → p = 1; a paired t-test on a constant non-zero
difference, or Welch on two constant groups with different means → p = 0 (the t statistic is
infinite).

**Query bootstrap** (per run, test split): how much a metric would move with another sample of
test queries of the same size. One exact ranking pass over the run's saved test embeddings gives
each query's value (Recall@k: 1 if a relevant item is among its k nearest, lone queries count as
misses; MAP@R: the query's AP@R, over the queries with R ≥ 1, as :mod:`metrics.retrieval` defines
them), then B resamples of the queries with replacement, all metrics at once: a (b, Nq) count
matrix per chunk of resamples, built by one ``bincount`` of seeded ``integers(0, Nq)`` draws, and
one matrix product with the per-query values (the statistic is ``Σ counts·value·weight / Σ
counts·weight``, weight = 1 where the query counts in the metric's mean); the α/2, 1 − α/2
quantiles of the resampled metrics. The gallery is held fixed (only the queries are resampled).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import metrics
from metrics import retrieval
from metrics.context import EvalContext
from utilities.errors import ConfigError

CI_METHODS = ("t", "bootstrap", "none")
TESTS = ("auto", "paired_t", "wilcoxon", "welch")
UNTESTED = "n=1"  # the "test" of a comparison that could not be made
# the metrics with a per-query form (the query bootstrap): Recall@k (Euclidean or cosine), MAP@R
QUERY_METRIC = re.compile(r"(e_recall|c_recall)@\d+|mAP@R")
_ARRAYS = ("embeddings", "labels", "is_query", "is_gallery", "epoch")  # what the bootstrap reads of a .npz
_CELLS = 1 << 22  # int64 draws per chunk of query resamples (32 MB), whatever the split's size


def check_options(
    *,
    ci: str = "t",
    alpha: float = 0.05,
    n_resamples: int = 10000,
    test: str = "auto",
    query_resamples: int = 0,
) -> None:
    """Raise a one-line :class:`ConfigError` for a bad option, before any work."""
    if ci not in CI_METHODS:
        raise ConfigError(f"--ci {ci}: choose one of {', '.join(CI_METHODS)}")
    if test not in TESTS:
        raise ConfigError(f"--test {test}: choose one of {', '.join(TESTS)}")
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ConfigError(f"--alpha {alpha}: must lie strictly between 0 and 1 (0.05: 95% intervals)")
    if n_resamples < 100:
        raise ConfigError(f"--bootstrap {n_resamples}: need at least 100 resamples (default 10000)")
    if query_resamples != 0 and query_resamples < 100:
        raise ConfigError(f"--query_bootstrap {query_resamples}: 0 (off) or at least 100 resamples")


# ---- intervals over seeds -------------------------------------------------------------------------


def t_interval(values: np.ndarray | list[float], alpha: float = 0.05) -> tuple[float, float]:
    """Student-t interval of the mean at level 1 − ``alpha``; (NaN, NaN) for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(1 - alpha / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(
    values: np.ndarray | list[float], alpha: float = 0.05, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean (seeded); (NaN, NaN) for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_resamples, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def confidence_interval(
    values: np.ndarray | list[float], method: str = "t", alpha: float = 0.05, n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """The ``method`` (``t`` or ``bootstrap``) interval of the mean of ``values``."""
    if method == "t":
        return t_interval(values, alpha)
    if method == "bootstrap":
        return bootstrap_interval(values, alpha, n_resamples, seed)
    raise ValueError(f"no interval method {method!r} (t or bootstrap)")


# ---- comparison with the best method ----------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The two-sided p-value of one method against the best, and the test that gave it."""

    p: float
    test: str  # paired_t, wilcoxon, welch, or UNTESTED


def _tolerance(*arrays: np.ndarray) -> float:
    """Differences below this are float noise (0.7 - 0.6 is not 0.1), relative to the values."""
    return 1e-12 * max(1.0, *(float(np.abs(a).max()) for a in arrays))


def compare(best: dict[int, float], other: dict[int, float], test: str = "auto") -> Comparison:
    """``{seed: value}`` of the best method and of another one -> :class:`Comparison` (see the
    module docstring for the tests, the fall-back to Welch and the edge cases)."""
    if test not in TESTS:
        raise ValueError(f"no test {test!r} ({', '.join(TESTS)})")
    if set(best) == set(other) and test != "welch":
        seeds = sorted(best)
        x, y = np.array([best[s] for s in seeds]), np.array([other[s] for s in seeds])
        name = "wilcoxon" if test == "wilcoxon" else "paired_t"
        if len(seeds) < 2:
            return Comparison(float("nan"), UNTESTED)
        d, tol = x - y, _tolerance(x, y)
        if np.abs(d).max() <= tol:  # identical values: nothing to test, and scipy would warn
            return Comparison(1.0, name)
        with warnings.catch_warnings():  # zeros and ties: scipy's note on its normal approximation
            warnings.simplefilter("ignore")
            if name == "wilcoxon":  # signed ranks: a constant shift is an ordinary case here
                return Comparison(float(stats.wilcoxon(x, y).pvalue), name)
            if np.ptp(d) <= tol:  # one constant shift: zero variance, an infinite t statistic
                return Comparison(0.0, name)
            return Comparison(float(stats.ttest_rel(x, y).pvalue), name)
    a, b = np.array(list(best.values())), np.array(list(other.values()))
    if len(a) < 2 or len(b) < 2:
        return Comparison(float("nan"), UNTESTED)
    tol = _tolerance(a, b)
    if np.ptp(a) <= tol and np.ptp(b) <= tol:  # two constant groups: p = 1 if equal, else 0
        return Comparison(1.0 if abs(a.mean() - b.mean()) <= tol else 0.0, "welch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Comparison(float(stats.ttest_ind(a, b, equal_var=False).pvalue), "welch")


# ---- query bootstrap ---------------------------------------------------------------------------------


def per_query_values(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    names: list[str],
    *,
    query_mask: torch.Tensor | np.ndarray | None = None,
    gallery_mask: torch.Tensor | np.ndarray | None = None,
    backend: str = "auto",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (value, weight)}``, each (Nq,): the query's value of a :data:`QUERY_METRIC` and 1
    where the query counts in the metric's mean (all queries for Recall@k, R ≥ 1 for MAP@R), from
    one exact ranking pass; ``(value · weight).sum() / weight.sum()`` is the metric."""
    unknown = [n for n in names if not QUERY_METRIC.fullmatch(n)]
    if unknown:
        raise ValueError(f"no per-query form for {', '.join(unknown)} (only e_recall@k, c_recall@k, mAP@R)")
    masks = [
        None if m is None else torch.as_tensor(np.asarray(m), dtype=torch.bool)
        for m in (query_mask, gallery_mask)
    ]
    ctx = EvalContext(torch.as_tensor(np.asarray(embeddings)), torch.as_tensor(np.asarray(labels)),
                      query_mask=masks[0], gallery_mask=masks[1], backend=backend)  # fmt: skip
    parsed = {n: metrics.parse(n) for n in names}
    ctx.request_ranks(max(m.ranks_needed(ctx) for m in parsed.values()))
    out = {}
    for name, metric in parsed.items():
        if isinstance(metric, retrieval.Recall):  # CosineRecall too: its own view
            ranks = ctx.ranks(metric.view)
            hit = ranks[:, 0] <= metric.k if ranks.shape[1] else torch.zeros(len(ranks), dtype=torch.bool)
            value, weight = hit.double(), torch.ones(len(hit), dtype=torch.float64)
        else:  # MAP@R
            value, weight = metric.per_query(ctx).double(), (ctx.n_relevant >= 1).double()
        out[name] = (value.cpu().numpy(), weight.cpu().numpy())
    return out


def query_bootstrap(
    values: dict[str, tuple[np.ndarray, np.ndarray]], n_resamples: int = 10000, alpha: float = 0.05,
    seed: int = 0, chunk: int | None = None,
) -> dict[str, tuple[float, float]]:  # fmt: skip
    """``{name: (low, high)}``: the percentile interval of each metric of ``values`` (as
    :func:`per_query_values` returns them) over ``n_resamples`` resamples of the queries, every
    metric on the same resamples. ``chunk``: resamples per count matrix (default: 2^22 cells)."""
    names = list(values)
    v = np.stack([values[n][0] for n in names]).astype(np.float64)  # (M, Nq)
    w = np.stack([values[n][1] for n in names]).astype(np.float64)
    nq = v.shape[1]
    rng = np.random.default_rng(seed)
    size = chunk or max(1, _CELLS // nq)
    resampled = np.empty((len(names), n_resamples))
    for start in range(0, n_resamples, size):
        b = min(size, n_resamples - start)
        idx = rng.integers(0, nq, (b, nq))  # row r: the queries of resample start + r
        counts = np.bincount((idx + nq * np.arange(b)[:, None]).ravel(), minlength=b * nq).reshape(b, nq)
        counts = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # no query with R >= 1 drawn: NaN
            resampled[:, start : start + b] = ((counts @ (v * w).T) / (counts @ w.T)).T
    out = {}
    for name, row in zip(names, resampled, strict=True):
        row = row[np.isfinite(row)]
        low, high = np.quantile(row, [alpha / 2, 1 - alpha / 2]) if len(row) else (np.nan, np.nan)
        out[name] = (float(low), float(high))
    return out


@dataclass(frozen=True)
class QueryInterval:
    """One run's metric on its saved embeddings and its query-bootstrap interval."""

    value: float
    low: float
    high: float


def load_split(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``--save_embeddings`` file (embeddings, labels, optional is_query /
    is_gallery masks and epoch); ValueError with one line for an unreadable or malformed file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files if k in _ARRAYS}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as .npz ({err})") from None
    emb, lab = data.get("embeddings"), data.get("labels")
    if emb is None or lab is None or emb.ndim != 2 or lab.ndim != 1 or len(emb) != len(lab):
        raise ValueError(f"{path}: needs arrays embeddings (N, D) and labels (N,)")
    return data


def query_intervals(
    data: dict[str, np.ndarray], names: list[str], *, n_resamples: int = 10000, alpha: float = 0.05,
    seed: int = 0, backend: str = "auto",
) -> dict[str, QueryInterval]:  # fmt: skip
    """``{name: QueryInterval}`` of the :data:`QUERY_METRIC` ``names`` on one split's saved arrays
    (:func:`load_split`): one ranking pass, then :func:`query_bootstrap`."""
    values = per_query_values(data["embeddings"], data["labels"], names, query_mask=data.get("is_query"),
                              gallery_mask=data.get("is_gallery"), backend=backend)  # fmt: skip
    bounds = query_bootstrap(values, n_resamples, alpha, seed)
    return {
        name: QueryInterval(float((v * w).sum() / w.sum()) if w.any() else float("nan"), *bounds[name])
        for name, (v, w) in values.items()
    }
