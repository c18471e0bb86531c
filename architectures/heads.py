"""Distribution heads (``--embedding_distribution``) and the confidence each distribution gives.

"Probabilistic Embeddings Revisited" (Karpukhin, Dereka, Kolesnikov, arXiv:2202.06768) compares
networks that emit a distribution per image instead of a point. The mean keeps the ordinary
``last_linear`` head; one more linear layer from the same backbone features, the
:class:`UncertaintyHead` (module name ``uncertainty_head``, created only for a probabilistic
distribution, so a ``dirac`` model and its checkpoints are unchanged), predicts the spread:

* ``gaussian``: a diagonal Gaussian N(μ, diag σ²); the head predicts D log-variances, packed as
  ``[μ | log σ²]`` (B, 2D). σ² = softplus(r) + σ²_min with σ²_min = e^-10 (PFE's and the paper's
  bound of the log inverse variance, 10), so log σ² lies in [-10, log(1 + |r|)] for any finite
  head output r (no clamp: the gradient never vanishes at a hard bound). Where σ² is small,
  softplus(r) ≈ e^r and log σ² ≈ r: PFE's exponential parametrisation where training lives,
  but only logarithmic growth for large r. The bias starts at σ² = 10^-3 (log σ² ≈ -6.9, PFE's
  initial shift -7), small against the per-coordinate spread of a unit-norm embedding.
* ``vmf``: a von Mises-Fisher distribution vMF(μ, κ) on the unit sphere; μ is always
  L2-normalised and the head predicts one concentration, packed as ``[μ | log κ]`` (B, D + 1).
  κ = softplus(r) + κ_min with κ_min = 10^-2 (the lower end of the range the vMF normaliser in
  ``criteria/_common.py`` is accurate on); κ ≈ r for large r, so κ stays finite (κ = 10^4 at
  r = 10^4). The bias starts at κ = D, a moderately concentrated distribution (mean resultant
  length A_D(D) ≈ 0.62) rather than a nearly uniform one.

The weights of both heads keep torch's default ``nn.Linear`` initialisation (images start with
slightly different spreads, so confidence rankings are not all ties). The head's linear layer
runs under ``--amp`` autocast like ``last_linear``; the softplus and log run in float32.

:func:`confidence` maps the per-image parameters of ``EmbeddingNet.infer`` to one score, higher
= more confident: the embedding norm before normalisation (``dirac``), -mean_d log σ²_d
(``gaussian``, the paper's choice), log κ (``vmf``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metrics.scores import confidence  # noqa: F401  (re-exported: one definition for training and evaluation)

DIRAC = "dirac"
GAUSSIAN = "gaussian"
VMF = "vmf"
DISTRIBUTIONS = (DIRAC, GAUSSIAN, VMF)

LOG_VAR_MIN = -10.0  # σ² >= e^-10
INIT_VAR = 1e-3
KAPPA_MIN = 1e-2


def inverse_softplus(y: float) -> float:
    """r with softplus(r) = y > 0, without overflow for large y: y + log(1 - e^-y)."""
    return y + math.log(-math.expm1(-y))


class UncertaintyHead(nn.Module):
    """Backbone features (B, F) -> per-image log-parameters (B, P): log(softplus(W f + b) + floor).

    ``floor`` bounds the parameter from below (σ²_min or κ_min); ``init`` is the value the bias
    alone gives (the parameter of an image whose features the weights map to 0)."""

    def __init__(self, in_features: int, out_features: int, *, floor: float, init: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.floor = floor  # a constant of the code, not state: checkpoints hold only the linear layer
        nn.init.constant_(self.linear.bias, inverse_softplus(init - floor))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The raw head output r (in the autocast dtype under ``--amp``)."""
        return self.linear(features)

    def log_parameter(self, raw: torch.Tensor) -> torch.Tensor:
        """log(softplus(r) + floor) in float32: finite for every finite r."""
        return torch.log(nn.functional.softplus(raw.float()) + self.floor)


def make_head(distribution: str, in_features: int, embed_dim: int) -> UncertaintyHead | None:
    """The uncertainty head of ``distribution`` (None for ``dirac``, which has none)."""
    if distribution == GAUSSIAN:
        return UncertaintyHead(in_features, embed_dim, floor=math.exp(LOG_VAR_MIN), init=INIT_VAR)
    if distribution == VMF:
        return UncertaintyHead(in_features, 1, floor=KAPPA_MIN, init=float(embed_dim))
    if distribution == DIRAC:
        return None
    raise ValueError(f"unknown embedding distribution {distribution!r}; one of {', '.join(DISTRIBUTIONS)}")
