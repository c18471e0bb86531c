"""The numba CPU kernel of :mod:`metrics.ranking` (imported only when that backend runs).

Per query row (rows in parallel): gather the row's relevant keys ``(distance bits << 32) |
gallery position`` and sort them (R of them); build a lookup table over the distance bits between
the smallest and the largest relevant key, ≤ 16·R bins, holding for each bin the number of
relevant keys below it; then one pass over the row: a gallery item's bucket (how many relevant
keys are smaller than its key) is the table entry of its bin, advanced past the few relevant keys
inside that bin. Items beyond the largest relevant key share one extra bin, so the pass has no
data-dependent branch but that short advance (a branch per item made it 2.5× slower). The prefix
sums of the bucket counts are the ranks. Everything is integer arithmetic, so the result is exact
and independent of the thread count. The row arrives as a raw BLAS product; the kernel finishes
it into the key's floats (:class:`metrics.ranking.ScoreBlocks`) while it is in cache.

Sparse rows: when the relevant items are all near the query (small classes, as in SOP), most of
the row lies beyond the largest relevant distance. A row whose ROW_SAMPLE evenly spaced sample
columns put fewer than 1/8 at or below it takes a branchy pass instead, which skips those items
after one compare; the branch is then well predicted (SOP scale: 0.45 instead of 1.3 ns per
distance; rows of CUB's 59-image classes stay on the branchless pass). Both passes give the same
counts.

Depth bound: when the caller only compares ranks up to a depth (every metric but ``mAP`` and
``mrr``: 1,023 at most), the items beyond the row's depth-th nearest do not matter either. An
order statistic of the sample, taken deeper than the depth (three standard deviations plus three
columns), bounds them; after finishing the row the pass skips every item above the bound after
one integer compare and counts the rest. The bound is checked, not trusted: if fewer than
``depth`` other items lie within it, the row is ranked in full. Relevant items beyond a valid
bound rank deeper than the depth and get ``missing``. At iNaturalist scale (136k gallery,
55-image classes, whose farthest relevant item lies about halfway down the row) the first
version of the bound cut the whole pass from 4.3-5.7 to 2.6-3.7 ns per distance (2 cores, load
~1, side by side), of which BLAS's product is ~1.5-2.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from metrics._threads import numba_threads_like_torch

_SENTINEL = np.iinfo(np.int64).max
ROW_SAMPLE = 1024  # columns per row that choose its pass and bound its depth


@njit(cache=True, nogil=True, inline="always")
def _count_row(row, keys, lut, lo, nbins, shift, counts):
    for g in range(row.shape[0]):
        v = max(np.int64(row[g]), 0)
        bucket = lut[min(max(v - lo, 0) >> shift, nbins)]
        key = (v << 32) | g
        while keys[bucket] < key:  # keys[n] is the sentinel: no bound check needed
            bucket += 1
        counts[bucket] += 1


@njit(cache=True, nogil=True, inline="always")
def _count_row_sparse(row, keys, n, lut, lo, nbins, shift, counts):
    last = keys[n - 1]
    hi = np.int32(last >> 32)
    for g in range(row.shape[0]):
        if row[g] > hi:  # beyond every relevant item: the common, well-predicted case
            continue
        v = max(np.int64(row[g]), 0)
        key = (v << 32) | g
        if key > last:
            continue
        bucket = lut[min(max(v - lo, 0) >> shift, nbins)]
        while keys[bucket] < key:
            bucket += 1
        counts[bucket] += 1


@njit(cache=True, nogil=True, inline="always")
def _bits(row_f, alpha, col, qi, g, cell, cell_bits):
    """The ranking key's distance bits of column g, finished as the full pass finishes it
    (metrics.ranking.ScoreBlocks), bit-cast through a one-element scratch array."""
    v = (alpha * row_f[g] + col[g]) + qi
    cell[0] = v if v > 0 else np.float32(0.0)
    return np.int64(cell_bits[0])


@njit(cache=True, nogil=True)
def _sample(row_f, alpha, col, qi, cell, cell_bits):
    """The row's finished distance bits at about ROW_SAMPLE evenly spaced columns."""
    step = max(1, row_f.shape[0] // ROW_SAMPLE)
    out = np.empty((row_f.shape[0] + step - 1) // step, np.int32)
    j = 0
    for g in range(0, row_f.shape[0], step):
        out[j] = _bits(row_f, alpha, col, qi, g, cell, cell_bits)
        j += 1
    return out


@njit(cache=True, nogil=True)
def _bound_index(depth, m, n_cols):
    """Which order statistic of an m-column sample bounds the ``depth`` nearest of n_cols items
    from above with a margin (three standard deviations plus three columns deeper), or -1 when
    that bound would keep more than an eighth of the row (then skipping buys nothing). At
    iNaturalist scale (depth 1,023, 136k columns, 1,024 samples: the 19th) it held for every one
    of 1,024 rows checked and keeps 1.9 % of a row; the earlier ~1.25x + 4 sd kept 2.4 %."""
    if depth <= 0 or depth >= n_cols - 1:
        return -1
    expect = depth * m / n_cols  # sample columns expected among the depth nearest
    q = int(expect + 3.0 * np.sqrt(expect) + 3.0)
    return q if q * 8 < m else -1


@njit(cache=True, nogil=True)
def _lookup(keys, n):
    """(lut, lo, nbins, shift): for each bin of distance bits from the smallest relevant key's, the
    number of the n sorted relevant keys below it; everything above the n-th shares the last bin."""
    if n == 0:
        return np.zeros(2, np.int64), np.int64(0), 1, 0
    lo = keys[0] >> 32
    span = (keys[n - 1] >> 32) - lo + 1
    shift = 0
    while (span >> shift) > 16 * n:
        shift += 1
    nbins = ((span - 1) >> shift) + 1
    lut = np.empty(nbins + 1, np.int64)
    h = 0
    for j in range(nbins):
        edge = (lo + (np.int64(j) << shift)) << 32
        while h < n and keys[h] < edge:
            h += 1
        lut[j] = h
    lut[nbins] = n
    return lut, lo, nbins, shift


@njit(cache=True, nogil=True, inline="always")
def _count_row_below(row, bound, keys, lut, lo, nbins, shift, counts):
    """The pass of a finished row with a depth bound: every item whose bits exceed ``bound`` (the
    common, well-predicted case) is skipped after one integer compare; the others are counted,
    those beyond the last ranked relevant key into the sentinel's bucket. (Comparing the
    unfinished distances instead, one fused multiply-add-compare per item and no finishing pass,
    was 15-30 % slower at iNaturalist scale: that loop does not vectorise, the finishing pass does.
    Testing groups of 8-64 columns branch-free first was slower too.)"""
    for g in range(row.shape[0]):
        if row[g] > bound:
            continue
        v = np.int64(row[g])
        bucket = lut[min(max(v - lo, 0) >> shift, nbins)]
        key = (v << 32) | g
        while keys[bucket] < key:
            bucket += 1
        counts[bucket] += 1


@njit(cache=True, nogil=True, inline="always")
def _finish_row(row_f, alpha, col, qi):
    """The row's ranking-key floats, in place, while it is in cache (instead of two more parallel
    passes over the block, torch's add_ and clamp_min_); the same float32 values."""
    for g in range(row_f.shape[0]):
        v = (alpha * row_f[g] + col[g]) + qi
        row_f[g] = v if v > 0 else np.float32(0.0)


@njit(parallel=True, cache=True, nogil=True)
def _rank_block(
    d, alpha, col, q_sq, members, start, stop, self_pos, out, mode, depth
):  # pragma: no cover - compiled
    n_rows = d.shape[0]
    width = out.shape[1]
    for i in prange(n_rows):
        row_f = d[i]
        qi = q_sq[i]
        cell = np.empty(1, np.float32)  # a finished distance's bits, read through an int32 view
        cell_bits = cell.view(np.int32)
        own = self_pos[i]
        keys = np.empty(stop[i] - start[i] + 1, np.int64)
        n = 0
        for m in range(start[i], stop[i]):
            c = members[m]
            if c != own:
                keys[n] = (_bits(row_f, alpha, col, qi, c, cell, cell_bits) << 32) | c
                n += 1
        if n == 0:
            continue
        keys[:n].sort()
        keys[n] = _SENTINEL
        own_bits = _bits(row_f, alpha, col, qi, own, cell, cell_bits) if own >= 0 else np.int64(-1)
        counts = np.zeros(n + 1, np.int64)
        sample = _sample(row_f, alpha, col, qi, cell, cell_bits)
        below = 0  # sample columns within the farthest relevant item
        for v in sample:
            below += v <= (keys[n - 1] >> 32)
        n_ranked = n
        q = _bound_index(depth, len(sample), row_f.shape[0])
        bound = np.int64(-1)
        if 0 <= q < below:
            # relevant items beyond the bound rank deeper than ``depth`` if at least ``depth``
            # other items lie within it: count only those, then check that they are enough
            bound = np.int64(np.partition(sample, q)[q])
            n_ranked = 0
            while n_ranked < n and (keys[n_ranked] >> 32) <= bound:
                n_ranked += 1
        _finish_row(row_f, alpha, col, qi)
        row = row_f.view(np.int32)
        if n_ranked < n:
            beyond = keys[n_ranked]
            keys[n_ranked] = _SENTINEL
            lut, lo, nbins, shift = _lookup(keys, n_ranked)
            _count_row_below(row, np.int32(bound), keys, lut, lo, nbins, shift, counts)
            within = counts[: n_ranked + 1].sum() - (1 if 0 <= own_bits <= bound else 0)
            if within < depth:  # an unlucky sample: rank the row in full
                keys[n_ranked] = beyond
                n_ranked = n
                counts[:] = 0
        if n_ranked == n:
            lut, lo, nbins, shift = _lookup(keys, n)
            if mode == 2 or (mode == 0 and below * 8 < len(sample)):
                _count_row_sparse(row, keys, n, lut, lo, nbins, shift, counts)
            else:
                _count_row(row, keys, lut, lo, nbins, shift, counts)
        if own >= 0 and (n_ranked == n or own_bits <= bound):  # the query counted itself: undo
            key = (own_bits << 32) | own
            b = 0
            while keys[b] < key:
                b += 1
            counts[b] -= 1
        acc = 0
        for h in range(min(n_ranked, width)):
            acc += counts[h]
            out[i, h] = acc
        for h in range(n_ranked, min(n, width)):
            out[i, h] = row_f.shape[0] + 1  # deeper than depth: metrics.ranking.missing


def run(blocks, n_gallery, members, start, stop, self_pos, out, rows, mode=0, depth=0) -> None:
    """Fill ``out`` (Nq, W) block by block: ``blocks.block(s, e, buf)`` computes the raw block of
    query rows s:e (a BLAS product, see :class:`metrics.ranking.ScoreBlocks`), the kernel finishes
    each row into the ranking key's floats and ranks it. ``mode``: 0 picks the dense or sparse
    pass per row, 1 / 2 force one (for tests). ``depth`` > 0: relevant items ranked deeper than it
    may be stored as ``n_gallery + 1`` instead of their rank."""
    members_np = members.numpy()
    start_np, stop_np, self_np = start.numpy(), stop.numpy(), self_pos.numpy()
    out_np = out.numpy()
    q_sq = blocks.row.numpy()  # computed once, not one small parallel region per block
    col = blocks.col.numpy()
    alpha = np.float32(blocks.alpha)
    n_q = len(q_sq)
    buf = torch.empty(min(rows, n_q), n_gallery, dtype=torch.float32)
    for s in range(0, n_q, rows):
        e = min(s + rows, n_q)
        d = blocks.block(s, e, buf[: e - s])
        with numba_threads_like_torch():  # torch's BLAS keeps its own thread count between blocks
            _rank_block(
                d.numpy(),
                alpha,
                col,
                q_sq[s:e],
                members_np,
                start_np[s:e],
                stop_np[s:e],
                self_np[s:e],
                out_np[s:e],
                mode,
                depth,
            )
