"""Verification metrics: is a pair of samples of one class or not, judged by their cosine similarity.

The verification view of the probabilistic-embeddings literature (Karpukhin, Dereka &
Kolesnikov, "Probabilistic Embeddings Revisited", arXiv:2202.06768, and its code: ROC AUC, TPR at a
fixed FPR, EER) and open-metric-learning's FNMR@FMR. A **pair** is an ordered (query q, gallery
item g), g ≠ q by index; positive if they share the label, negative otherwise. Leave-one-out (no
masks): every ordered pair of distinct samples, so every unordered pair twice with the same score,
which leaves every rate unchanged; under the query/gallery protocol: query × gallery. The score is
the cosine similarity of the L2-normalised embeddings (deviation: the paper scores pairs with the
method's own similarity, e.g. MLS for a Gaussian embedding; here every method is scored alike);
"match" when the score is at least the threshold.

**Which pairs** (seeded by ``compute``'s ``seed``, the same pairs for the same split and seed; no
flag):

* at most :data:`EXACT_PAIRS` ordered pairs in all: every pair (the exact ROC);
* otherwise every positive pair, found class by class (members of a class sorted together,
  classes grouped by size rounded up to a power of two, one batched matrix product per group:
  O(Σ n_c² · D), no N × N matrix), thinned by a seeded coin with probability
  :data:`POS_PAIRS` / #positives when there are more than that (iNat scale); and about
  :data:`NEG_PAIRS` candidate pairs in :data:`BLOCK` × :data:`BLOCK` blocks of uniformly drawn
  queries × gallery items, whose different-label pairs are the negatives. Every ordered pair has
  the same chance to be drawn, so each rate below is estimated without bias; a block reuses its
  rows and columns, which makes its scores one cheap matrix product (gathering both rows of every
  single random pair measured ~30× slower), at the price of pairs that share a row or column.
  ``tpr@1e-4`` / ``fnmr@1e-4`` rest on about 100 negatives above the threshold (a ~10 % sampling
  error of the rate at that point).

Memory: tiles of at most :data:`TILE` floats plus the kept scores, whatever N (the tests bound the
peak at N = 20,000, where one N × N float32 matrix would take 1.6 GB).

On the ROC of these pairs (sklearn's ``roc_curve`` with ``drop_intermediate=False``: one point per
distinct score, TPR(t) = #positives ≥ t / #positives, FPR(t) = #negatives ≥ t / #negatives, from
(0, 0) to (1, 1)):

* ``roc_auc``: the trapezoidal area under it (sklearn's ``roc_auc_score``: ties count one half).
* ``tpr@<x>`` (e.g. ``tpr@1e-3``): the highest TPR among the curve's points with FPR ≤ x (a
  threshold that keeps the false-positive rate within x). Deviation: the paper's code took the
  point whose FPR is *nearest* x, which may exceed it.
* ``eer``: the equal error rate, where the linearly interpolated curve crosses FPR = 1 − TPR.
  (The paper's code took the better of the two curve points nearest the crossing.)
* ``fnmr@<x>`` (open-metric-learning's ``fnmr@fmr``): with distances d = 1 − cosine, the threshold
  T = the x-quantile of the negative distances (``numpy.quantile``'s linear interpolation), and
  FNMR = the fraction of positive distances ≥ T. It is close to, but not exactly, 1 − ``tpr@x``
  (an interpolated threshold instead of a curve point).

Each kind of score is sorted once; every metric then counts by binary search (the EER's crossing
by bisection over the thresholds), never materialising the curve.

NaN if the pairs hold no positive or no negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from metrics._threads import stage_threads
from metrics.context import EvalContext

EXACT_PAIRS = 2**22  # every pair up to this many (leave-one-out: N ≤ 2048)
NEG_PAIRS = 2**20  # candidate pairs of the negative sample
POS_PAIRS = 2**20  # positives kept (thinned above this many)
BLOCK = 64  # rows and columns of one random negative block
TILE = 2**22  # floats per similarity tile or gathered embedding tile (16 MB)


@dataclass(frozen=True)
class Roc:
    """The scores of one split's pairs, each kind sorted: everything on the ROC follows by counting."""

    pos: torch.Tensor  # (P,) positive scores, ascending
    neg: torch.Tensor  # (M,) negative scores, ascending

    def tpr(self, t: torch.Tensor) -> torch.Tensor:
        """Fraction of positives ≥ t (float64)."""
        return (len(self.pos) - torch.searchsorted(self.pos, t)).double() / len(self.pos)

    def fpr(self, t: torch.Tensor) -> torch.Tensor:
        """Fraction of negatives ≥ t (float64)."""
        return (len(self.neg) - torch.searchsorted(self.neg, t)).double() / len(self.neg)


def _rows(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``z[idx]`` for an index array of any shape (index_select: several times faster on CPU)."""
    return z.index_select(0, idx.reshape(-1)).view(*idx.shape, z.shape[1])


def _all_pairs(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
    z = ctx.normalized
    zg, lg, gi = z[ctx.gallery_idx], ctx.labels[ctx.gallery_idx], ctx.gallery_idx
    rows = max(1, TILE // len(gi))
    pos, neg = [], []
    for a in range(0, len(ctx.query_idx), rows):
        qi = ctx.query_idx[a : a + rows]
        s = z[qi] @ zg.T
        same = ctx.labels[qi][:, None] == lg[None, :]
        pos.append(s[same & (qi[:, None] != gi[None, :])])
        neg.append(s[~same])
    return torch.cat(pos), torch.cat(neg)


def _positive_pairs(ctx: EvalContext, gen: torch.Generator) -> torch.Tensor:
    """Scores of every ordered positive pair (thinned to about POS_PAIRS), class by class."""
    device, z = ctx.device, ctx.normalized
    is_q = torch.zeros(ctx.n, dtype=torch.bool, device=device)
    is_q[ctx.query_idx] = True
    is_g = torch.zeros(ctx.n, dtype=torch.bool, device=device)
    is_g[ctx.gallery_idx] = True
    items = torch.nonzero(is_q | is_g).flatten()
    labels, order = torch.sort(ctx.labels[items], stable=True)
    items = items[order]
    _, sizes = torch.unique_consecutive(labels, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    # positives: Σ_c (#queries)(#gallery) − #(both), computed before any tile to set the thinning
    _, cls = torch.unique_consecutive(labels, return_inverse=True)
    nq = torch.bincount(cls, weights=is_q[items].double(), minlength=len(sizes))
    ng = torch.bincount(cls, weights=is_g[items].double(), minlength=len(sizes))
    total = float((nq * ng).sum() - (is_q & is_g)[items].sum())
    keep = min(1.0, POS_PAIRS / total) if total > 0 else 1.0
    padded = 2 ** torch.ceil(torch.log2(sizes.double())).long()  # size group: next power of two
    out = []
    for s in torch.unique(padded[sizes >= 2]).tolist():  # one batched product per size group
        group = torch.nonzero((padded == s) & (sizes >= 2)).flatten()
        col = torch.arange(s, device=device)
        member_ok = col[None, :] < sizes[group][:, None]  # (m, s) real members, not padding
        members = items[(starts[group][:, None] + col[None, :]).clamp(max=len(items) - 1)]
        r = min(s, max(1, TILE // s))  # rows per tile: one class's block may be split
        cc = max(1, min(TILE // (r * s), TILE // (s * z.shape[1])))  # classes per tile
        for a in range(0, len(group), cc):
            mem, ok = members[a : a + cc], member_ok[a : a + cc]
            cols = _rows(z, mem)  # (cc, s, D)
            col_ok = ok & is_g[mem]
            for b in range(0, s, r):
                rmem = mem[:, b : b + r]
                rows = cols if r == s else _rows(z, rmem)  # a whole class block: one gather serves both
                sim = torch.bmm(rows, cols.transpose(1, 2))  # (cc, r, s)
                pair = (ok[:, b : b + r] & is_q[rmem])[:, :, None] & col_ok[:, None, :]
                pair &= rmem[:, :, None] != mem[:, None, :]
                if keep < 1.0:
                    pair &= (torch.rand(pair.shape, generator=gen) < keep).to(device)
                out.append(sim.masked_select(pair))
    return torch.cat(out) if out else z.new_zeros(0)


def _negative_pairs(ctx: EvalContext, gen: torch.Generator) -> torch.Tensor:
    """Different-label scores among NEG_PAIRS candidates in random BLOCK × BLOCK blocks."""
    z = ctx.normalized
    blocks = math.ceil(NEG_PAIRS / BLOCK**2)
    rows = ctx.query_idx[torch.randint(len(ctx.query_idx), (blocks, BLOCK), generator=gen).to(ctx.device)]
    cols = ctx.gallery_idx[torch.randint(len(ctx.gallery_idx), (blocks, BLOCK), generator=gen).to(ctx.device)]
    per_tile = max(1, TILE // (BLOCK * max(BLOCK, z.shape[1])))
    out = []
    for a in range(0, blocks, per_tile):
        r, c = rows[a : a + per_tile], cols[a : a + per_tile]
        sim = torch.bmm(_rows(z, r), _rows(z, c).transpose(1, 2))
        out.append(sim.masked_select(ctx.labels[r][:, :, None] != ctx.labels[c][:, None, :]))
    return torch.cat(out)


def pair_scores(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(positive scores, negative scores, every pair used?) of the split, float32 cosines."""
    pairs = len(ctx.query_idx) * len(ctx.gallery_idx)
    if pairs <= EXACT_PAIRS:
        return (*_all_pairs(ctx), True)
    gen = torch.Generator().manual_seed(ctx.seed)
    neg = _negative_pairs(ctx, gen)
    return _positive_pairs(ctx, gen), neg, False


def _ascending(values: torch.Tensor) -> torch.Tensor:
    if values.device.type == "cpu":  # numpy's vectorised sort: ~25x torch's on CPU (values only)
        return torch.from_numpy(np.sort(values.numpy()))
    return torch.sort(values).values


def roc(pos: torch.Tensor, neg: torch.Tensor) -> Roc:
    """The ROC of positive vs negative scores (both sorted once)."""
    dtype = torch.promote_types(pos.dtype, neg.dtype)
    return Roc(_ascending(pos.to(dtype)), _ascending(neg.to(dtype)))


def _roc(ctx: EvalContext) -> Roc | None:
    def build() -> Roc | None:
        work = (NEG_PAIRS + POS_PAIRS) * ctx.embeddings.shape[1]  # multiply-adds of the scores
        with stage_threads(work, ctx.device):
            pos, neg, _ = pair_scores(ctx)
            return roc(pos, neg) if len(pos) and len(neg) else None

    return ctx.shared("verification_roc", build, stage="verification")


def _rate(family: str, x: object, what: str) -> float:
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < 1:
        raise ValueError(f"{family} needs a {what} in (0, 1), e.g. {family}@1e-3")
    return value


class _Verification:
    """Base of the pair metrics: a function :meth:`value` of the split's ROC (NaN without one)."""

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 0

    def value(self, curve: Roc) -> float:
        raise NotImplementedError

    def __call__(self, ctx: EvalContext) -> float:
        curve = _roc(ctx)
        return float("nan") if curve is None else self.value(curve)


class RocAuc(_Verification):
    """Area under the ROC: P(positive > negative) + ½ P(equal), by counting (Mann-Whitney)."""

    name = "roc_auc"

    def value(self, curve: Roc) -> float:
        below = torch.searchsorted(curve.neg, curve.pos).sum()  # negatives under each positive
        tied = torch.searchsorted(curve.neg, curve.pos, right=True).sum() - below
        return (below.double() + 0.5 * tied.double()).item() / (len(curve.pos) * len(curve.neg))


class TprAtFpr(_Verification):
    """The highest TPR of a ROC point with FPR ≤ x."""

    name = "tpr"

    def __init__(self, *, fpr: float) -> None:
        self.fpr = _rate(self.name, fpr, "false-positive rate")

    def value(self, curve: Roc) -> float:
        m = len(curve.neg)
        j = math.floor(self.fpr * m)  # the most negatives a threshold may accept: j / m ≤ x
        j += (j + 1) / m <= self.fpr
        j -= j / m > self.fpr
        if j >= m:
            return 1.0
        # accept at most j negatives: every score above the (j + 1)-th largest negative
        above = curve.neg[m - 1 - j]
        return (len(curve.pos) - int(torch.searchsorted(curve.pos, above, right=True))) / len(curve.pos)


def _last_at_least_zero(values: torch.Tensor, gap) -> torch.Tensor | None:
    """The largest of ascending ``values`` with ``gap(value) ≥ 0`` (``gap`` non-increasing), by
    bisection: log₂ len(values) evaluations instead of one per value."""
    if len(values) == 0 or gap(values[0]) < 0:
        return None
    lo, hi = 0, len(values) - 1  # gap(values[lo]) ≥ 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if gap(values[mid]) >= 0 else (lo, mid - 1)
    return values[lo]


class EER(_Verification):
    """Equal error rate: FPR = 1 − TPR on the linearly interpolated ROC."""

    name = "eer"

    def value(self, curve: Roc) -> float:
        # ROC points are the distinct scores t (accept iff score ≥ t) and t = +inf at (0, 0);
        # gap(t) = FPR − (1 − TPR) falls as t rises: the crossing lies between the highest point
        # with gap ≥ 0 (the smallest score has FPR = TPR = 1: gap 1) and the next higher point
        def gap(t: torch.Tensor) -> float:
            return float(curve.fpr(t) - (1.0 - curve.tpr(t)))

        found = [v for v in (_last_at_least_zero(a, gap) for a in (curve.pos, curve.neg)) if v is not None]
        low = max(found)
        above = [a[torch.searchsorted(a, low, right=True) :] for a in (curve.pos, curve.neg)]
        higher = [a[0] for a in above if len(a)]  # the next distinct score of each kind
        f1, t1 = float(curve.fpr(low)), float(curve.tpr(low))
        f0, t0 = (float(curve.fpr(min(higher))), float(curve.tpr(min(higher)))) if higher else (0.0, 0.0)
        g0, g1 = f0 - (1 - t0), f1 - (1 - t1)
        return f0 + g0 / (g0 - g1) * (f1 - f0)


def quantile(sorted_values: torch.Tensor, q: float) -> float:
    """``numpy.quantile(values, q)`` (linear interpolation) of ascending ``sorted_values``."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    a = float(sorted_values[lo])
    b = float(sorted_values[min(lo + 1, len(sorted_values) - 1)])
    t = h - lo
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)  # numpy's two-sided lerp


class FnmrAtFmr(_Verification):
    """open-metric-learning's FNMR@FMR: positives at distance ≥ the x-quantile of the negatives."""

    name = "fnmr"

    def __init__(self, *, fmr: float) -> None:
        self.fmr = _rate(self.name, fmr, "false-match rate")

    def value(self, curve: Roc) -> float:
        neg_distances = (1.0 - curve.neg.double()).flip(0)  # ascending
        threshold = quantile(neg_distances, self.fmr)
        return (1.0 - curve.pos.double() >= threshold).double().mean().item()
