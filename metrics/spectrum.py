"""ρ-spectrum metrics of the study (Roth et al. 2020, Sec. 5): how evenly the embedding variance
spreads over the singular directions.

s = the singular values of the **un-centred** (N, D) embedding matrix of the split, all
min(N, D) of them, computed once per split in float64 (from the eigenvalues of the D×D Gram
matrix), so CPU and CUDA agree. The reference used ``TruncatedSVD(D − 1)`` on CPU (silently
dropping one value) and a full SVD on GPU, and recomputed the SVD for every variant.

``rho_spectrum@m``:

* m = 0: the whole normalised spectrum ŝ = s / Σs (an array; logged as a histogram, not to CSV);
* m ≠ 0: drop the |m| − 1 largest values, renormalise ŝ = s / Σs over the rest, and with u the
  uniform distribution over the remaining values:
  m > 0: ρ = KL(u ‖ ŝ) = Σ u log(u / ŝ) (the paper's ρ(Φ); @2 is its "Rho3" figure value);
  m < 0: KL(ŝ ‖ u) = Σ ŝ log(ŝ / u) (0 · log 0 = 0).

KL(u ‖ ŝ) is +inf when a remaining singular value is exactly 0 (a rank-deficient embedding), which
is the true value, not NaN. NaN only if fewer than |m| values exist or all remaining are 0.
"""

from __future__ import annotations

import math

from metrics.context import EvalContext


class ArrayResult(list):
    """An array-valued metric result: a plain list for JSON, compact under a format spec, so
    ``f"{value:.4f}"`` in a log line prints ``array(D)`` instead of failing."""

    def __format__(self, spec: str) -> str:
        return f"array({len(self)})"


class RhoSpectrum:
    """KL divergence between the normalised singular-value spectrum and the uniform one."""

    name = "rho_spectrum"

    def __init__(self, *, m: int) -> None:
        if not isinstance(m, int) or isinstance(m, bool):
            raise ValueError("rho_spectrum needs an integer m, e.g. rho_spectrum@2 (0: the spectrum)")
        self.m = m

    @property
    def returns_array(self) -> bool:
        return self.m == 0

    def ranks_needed(self, ctx: EvalContext) -> int:
        return 0

    def __call__(self, ctx: EvalContext) -> float | ArrayResult:
        s = ctx.spectrum
        if self.m == 0:
            total = s.sum()
            return ArrayResult((s / total if total > 0 else s).tolist())
        s = s[abs(self.m) - 1 :]
        total = s.sum()
        if len(s) == 0 or total <= 0:
            return float("nan")
        p = s / total
        u = 1.0 / len(s)
        if self.m > 0:
            if bool((p == 0).any()):
                return math.inf
            return (u * (math.log(u) - p.log())).sum().item()
        nz = p[p > 0]
        return (nz * (nz.log() - math.log(u))).sum().item()
