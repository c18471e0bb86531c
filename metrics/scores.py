"""Retrieval scores and confidences of probabilistic embeddings (issue 14; Karpukhin, Dereka,
Kolesnikov, "Probabilistic Embeddings Revisited", arXiv:2202.06768).

A network trained with ``--embedding_distribution gaussian`` or ``vmf`` embeds each image as a
distribution; evaluation receives its mean (N, D) (what retrieval ranks by, ``--retrieval_score
mean``) and its parameters ``params`` (N, P): ``dirac`` P = 1, the embedding's norm before
L2-normalisation; ``gaussian`` P = D, log σ² per dimension; ``vmf`` P = 1, log κ.

``--retrieval_score`` picks the ranking key of the exact ranking pass (:mod:`metrics.ranking`):

* ``mean``: squared Euclidean distance of the means (every distribution).
* ``mls`` (gaussian; PFE, Shi & Jain 2019): the mutual likelihood score
  MLS(q, g) = −½ Σ_d [(μ_qd − μ_gd)² / (σ²_qd + σ²_gd) + log(σ²_qd + σ²_gd)] − (D/2) log 2π,
  higher = more similar. The pass ranks by −MLS shifted per query by ½ Σ_d log σ²_qd, i.e. by
  ½ Σ_d [(μ_qd − μ_gd)² / (σ²_qd + σ²_gd) + log(1 + σ²_gd / σ²_qd)], which orders a query's
  gallery like −MLS and is ≥ 0 term by term (the pass's integer keys need non-negative floats).
* ``expected_cosine`` (vMF): E[cos(z_q, z_g)] of independent z_q ~ vMF(μ_q, κ_q),
  z_g ~ vMF(μ_g, κ_g) is A_D(κ_q) A_D(κ_g) μ_q·μ_g, with A_D(κ) = I_{D/2}(κ) / I_{D/2−1}(κ) the mean
  resultant length (:func:`bessel_ratio`). A_D(κ_q) > 0 scales a query's whole row, so the pass
  ranks by 1 − w_g μ_q·μ_g with w_g = A_D(κ_g) / max_g A_D(κ_g) ∈ [0, 1] (in [0, 2]: float32 keeps
  its resolution however small the A's are, which 1 − E[cos] would not).

:func:`confidence` is the per-sample confidence the uncertainty metrics read (higher = more
confident). :func:`check_score` refuses a score that does not fit the run's distribution or the
faiss backend (which searches the means only).
"""

from __future__ import annotations

import math

import torch

DISTRIBUTIONS = ("dirac", "gaussian", "vmf")
# each score and the distribution whose parameters it reads (None: the mean alone, any distribution)
SCORES: dict[str, str | None] = {"mean": None, "mls": "gaussian", "expected_cosine": "vmf"}
# backward steps of the continued fraction of bessel_ratio: enough for κ up to ~1.6e6 to float64
# precision (the error shrinks like exp(-steps² / κ)); larger κ start from Amos' bound instead
MAX_CF_STEPS = 8192


def check_score(score: str, distribution: str, backend: str = "auto", *, has_params: bool = True) -> None:
    """Raise a one-line ValueError for an unknown score or distribution, a score that needs another
    distribution's parameters (or has none: ``has_params``), or a distribution score with the faiss
    backend."""
    if score not in SCORES:
        raise ValueError(f"unknown retrieval score '{score}'; choose from: {', '.join(SCORES)}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown embedding distribution '{distribution}'; choose from: {', '.join(DISTRIBUTIONS)}"
        )
    needs = SCORES[score]
    if needs is not None and needs != distribution:
        raise ValueError(
            f"--retrieval_score {score} ranks by the parameters of {needs} embeddings, "
            f"but the embeddings are {distribution} (--embedding_distribution {needs}, or --retrieval_score mean)"
        )
    if needs is not None and not has_params:
        raise ValueError(
            f"--retrieval_score {score} needs the {needs} parameters of the embeddings, and none were given"
        )
    if needs is not None and backend == "faiss":
        raise ValueError(
            f"--retrieval_score {score} needs the exact ranking pass (faiss searches the means only): "
            "use --eval_backend auto, numba or torch"
        )


def param_width(distribution: str, dim: int) -> int:
    """P, the columns of ``params`` for embeddings of width ``dim``."""
    return dim if distribution == "gaussian" else 1


def check_params(params: torch.Tensor, distribution: str, n: int, dim: int) -> None:
    """ValueError unless ``params`` is a finite (n, P) tensor for ``distribution``."""
    want = (n, param_width(distribution, dim))
    if params.ndim != 2 or tuple(params.shape) != want:
        what = {"dirac": "pre-normalisation norms", "gaussian": "log-variances", "vmf": "log-concentrations"}
        raise ValueError(
            f"params of {distribution} embeddings must be the {what[distribution]}, shape {want}, "
            f"got {tuple(params.shape)}"
        )
    if not torch.isfinite(params).all():
        raise ValueError(f"params of the {distribution} embeddings contain NaN or inf (diverged training?)")


def confidence(params: torch.Tensor, distribution: str) -> torch.Tensor:
    """(N,) float32 confidence of each sample, higher = more confident: ``dirac`` the embedding's
    norm before normalisation, ``gaussian`` −mean_d log σ²_d, ``vmf`` log κ."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown embedding distribution '{distribution}'; choose from: {', '.join(DISTRIBUTIONS)}"
        )
    if params.ndim != 2 or (distribution != "gaussian" and params.shape[1] != 1):
        raise ValueError(f"{distribution} parameters are (N, 1); got {tuple(params.shape)}")
    params = params.float()
    return -params.mean(1) if distribution == "gaussian" else params[:, 0].clone()


def bessel_ratio(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """A_dim(κ) = I_{dim/2}(κ) / I_{dim/2−1}(κ) (float64, same shape as ``kappa`` ≥ 0): the mean
    resultant length of a vMF distribution on the unit sphere of R^dim.

    The ratio r_ν = I_{ν+1} / I_ν obeys r_ν = κ / (2(ν+1) + κ r_{ν+1}) (the recurrence
    I_ν − I_{ν+2} = (2(ν+1)/κ) I_{ν+1}); evaluated backwards from order m = ν + n, started at
    Amos' (1974) upper bound κ / (m + ½ + √(κ² + (m + 3/2)²)) of r_m (exact to first order for
    small and for large κ), every step is a positive fraction (no cancellation, no overflow: I_ν
    itself is never formed), and a start error is multiplied by r² < 1 per step, in all by
    ≈ exp(−n²/κ) for n ≲ κ: n = √(40 κ_max) + 32 steps reach float64 precision for every κ of the
    tensor at once (κ = 1e4: ~660 vectorised steps), capped at :data:`MAX_CF_STEPS` (beyond
    κ ≈ 1.6e6 the start's O(κ⁻²) error remains: ~1e-13 at κ = 1e7). κ = 0 gives 0."""
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    k = kappa.double()
    nu = dim / 2 - 1
    k_max = float(k.max()) if k.numel() else 0.0
    steps = min(MAX_CF_STEPS, math.ceil(math.sqrt(40 * k_max)) + 32)
    m = nu + steps
    r = k / (m + 0.5 + torch.sqrt(k * k + (m + 1.5) ** 2))  # Amos' upper bound of r_m
    for j in range(steps, 0, -1):  # r_{nu+j-1} from r_{nu+j}
        r = k / (2 * (nu + j) + k * r)
    return r
