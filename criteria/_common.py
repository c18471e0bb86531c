"""The one small helper module the criteria share (copy it along with a criterion file).

Only torch is imported, so ``criteria/<loss>.py`` + this file can be dropped into any pipeline
(the loss files import it relatively, ``from ._common import ...``). Besides the tensor helpers it
holds the three bases of the losses:

* :class:`PairBasedLoss`: losses over the batch's own pairs; ``forward`` is ``cross_loss`` of the
  batch against itself (the cross-batch memory calls ``cross_loss`` with stored references);
* :class:`MinedLoss`: a :class:`PairBasedLoss` over the tuples of a batch miner, checked at
  construction (:func:`check_miner`) and mined in one place (:func:`mine_tuples`);
* :class:`ClassWeightLoss`: losses with one learnable (rows, D) table of class weights, proxies or
  centres, with its own optimizer group (:meth:`ClassWeightLoss.param_groups`).

**Probabilistic embeddings.** A loss that learns a distribution per image declares
``distribution = GAUSSIAN`` or ``VMF`` (deterministic losses: ``DIRAC``) and receives the packed
batch the network's distribution head emits: ``[μ | log σ²]`` (B, 2D) for a diagonal Gaussian,
``[μ | log κ]`` (B, D + 1) for a von Mises–Fisher distribution (μ unit-norm);
:func:`split_gaussian` / :func:`split_vmf` unpack it. Monte-Carlo losses draw from
:class:`SeededGenerators` (one ``torch.Generator`` per device seeded with the run's seed, its
state in the loss's state dict), so a resumed run draws the same samples. The von Mises–Fisher
numerics close the file: a stable log I_ν (Debye expansion), log C_d, A_d and Wood's sampler.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# Tuple kinds a batch miner can produce and a criterion can consume. Compatibility between a loss
# and a miner is checked on these kinds (never on a miner's name).
TRIPLETS = "triplets"  # (anchors, positives, negatives): three LongTensors of equal length T
PAIRS = "pairs"  # (a1, p, a2, n): positive pairs (a1, p) and negative pairs (a2, n)
NPAIR = "npair"  # (anchors, positives, neg_mask): (A,), (A,), (A, B) bool
LIFTED = "lifted"  # (anchors, pos_mask, neg_mask): (A,), (A, B) bool, (A, B) bool

# What the network emits per image: a point (the embedding), or the parameters of a distribution
# packed after the mean (see split_gaussian / split_vmf).
DIRAC = "dirac"  # (B, D): the embedding
GAUSSIAN = "gaussian"  # (B, 2D): mean μ, then log-variances log σ² (diagonal covariance)
VMF = "vmf"  # (B, D + 1): unit mean direction μ, then the log-concentration log κ
DISTRIBUTIONS = (DIRAC, GAUSSIAN, VMF)


def pairwise_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix (B, B) of the rows of ``x``, exact zeros on the diagonal.

    The square root is taken of ``max(d², eps)`` so the gradient stays finite for identical rows.
    """
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    d2 = d2 * (1.0 - torch.eye(len(x), device=x.device, dtype=x.dtype))
    return d2 if squared else d2.clamp_min(eps).sqrt()


def cross_distances(
    a: torch.Tensor, b: torch.Tensor, squared: bool = False, eps: float = 1e-12
) -> torch.Tensor:
    """Euclidean distances (n, m) between the rows of ``a`` (n, D) and ``b`` (m, D).

    The square root is taken of ``max(d², eps)`` so the gradient stays finite for identical rows.
    """
    d2 = (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)
    return d2 if squared else d2.clamp_min(eps).sqrt()


def row_distances(
    a: torch.Tensor, b: torch.Tensor, squared: bool = False, eps: float = 1e-12
) -> torch.Tensor:
    """Distances between matching rows of ``a`` and ``b`` (T, D) -> (T,)."""
    d2 = (a - b).pow(2).sum(1)
    return d2 if squared else d2.clamp_min(eps).sqrt()


def zero_loss(batch: torch.Tensor) -> torch.Tensor:
    """A differentiable 0 connected to ``batch`` (for "nothing was mined")."""
    return batch.sum() * 0.0


def same_label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask), both (B, B) bool."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def other_label_mask(labels: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
    """(n, M) bool: reference j has a class other than ``labels[i]``."""
    return labels[:, None] != ref_labels[None, :]


def cross_label_masks(q_labels: torch.Tensor, ref_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) masks (n, M) of queries against references, where query i is reference i.

    The positive mask excludes each query's own column; with ``ref_labels is q_labels`` this is
    :func:`same_label_masks`.
    """
    same = q_labels[:, None] == ref_labels[None, :]
    n = len(q_labels)
    own = torch.zeros_like(same)
    own[:, :n] = torch.eye(n, dtype=torch.bool, device=same.device)
    return same & ~own, ~same


def cosine_pairs(
    queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarities (n, M) of ``queries`` (the first rows of ``ref``) against ``ref``, and
    the positive and negative masks of :func:`cross_label_masks`, all on the queries' device."""
    sim = cosine_logits(queries, ref)
    pos, neg = cross_label_masks(q_labels.to(sim.device), ref_labels.to(sim.device))
    return sim, pos, neg


def check_labels(labels: torch.Tensor, n_classes: int, loss: str) -> None:
    """Clear error for class ids outside [0, n_classes) (a proxy/class-weight table has C rows)."""
    if len(labels) == 0:
        return
    lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"loss '{loss}' was built for {n_classes} classes (labels 0..{n_classes - 1}) but got labels "
            f"in [{lo}, {hi}]; set n_classes to the number of training classes"
        )


def masked_logsumexp(
    z: torch.Tensor, mask: torch.Tensor, dim: int = 1, add_one: bool = False
) -> torch.Tensor:
    """log(Σ_{mask} e^z) (or log(1 + Σ_{mask} e^z) with ``add_one``) along ``dim``; 0 for empty rows.

    Rows without any masked-in entry give exactly 0 with a zero (not NaN) gradient.
    """
    z = z.masked_fill(~mask, float("-inf"))
    if add_one:
        # the "1" is e^0: shift by max(0, max z) so that neither term can overflow
        shift = z.amax(dim, keepdim=True).clamp_min(0.0).detach()
        total = torch.exp(z - shift).sum(dim, keepdim=True) + torch.exp(-shift)
        return (torch.log(total) + shift).squeeze(dim)
    empty = ~mask.any(dim, keepdim=True)
    return torch.logsumexp(z.masked_fill(empty, 0.0), dim=dim).masked_fill(empty.squeeze(dim), 0.0)


def keep_anchors(tuples: tuple[torch.Tensor, ...], kind: str, n_queries: int) -> tuple[torch.Tensor, ...]:
    """Restrict mined tuples to anchors among the first ``n_queries`` rows (cross-batch memory).

    Triplet/npair/lifted tuples are filtered on their anchor index; pair tuples (a1, p, a2, n) on
    a1 and a2 separately. Row masks of npair/lifted tuples are filtered along with their anchors.
    """
    if kind == PAIRS:
        a1, p, a2, n = tuples
        k1, k2 = a1 < n_queries, a2 < n_queries
        return a1[k1], p[k1], a2[k2], n[k2]
    keep = tuples[0] < n_queries
    return tuple(t[keep] for t in tuples)


def init_class_weights(n_classes: int, dim: int) -> torch.Tensor:
    """(C, D) class weights drawn from U(−1/√D, 1/√D) (the reference study's initialisation)."""
    bound = 1.0 / dim**0.5
    return torch.empty(n_classes, dim).uniform_(-bound, bound)


def cosine_logits(batch: torch.Tensor, weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """cos(x_i, w_c) for all rows of ``batch`` (B, D) and ``weight`` (C, D) -> (B, C), O(B·C) memory.

    ``weight`` is a class-weight table or another set of embeddings (a cosine similarity matrix).
    """
    x = torch.nn.functional.normalize(batch, dim=1, eps=eps)
    w = torch.nn.functional.normalize(weight.to(batch.dtype), dim=1, eps=eps)
    return x @ w.T


def clamp_cosine(cos: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Clamp to [−1 + ε, 1 − ε] so that arccos has a finite gradient."""
    return cos.clamp(-1.0 + eps, 1.0 - eps)


def additive_angular_margin(cos_target: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """ArcFace's target logit cos(θ + m), kept monotonic in θ beyond θ + m > π.

    For θ ≤ π − m this is cos(θ + m); beyond, cos θ − m·sin m (insightface's continuation), so the
    logit keeps decreasing in θ instead of rising again towards cos(2π) = 1.
    """
    theta = torch.arccos(clamp_cosine(cos_target))
    margin = torch.as_tensor(margin, dtype=cos_target.dtype, device=cos_target.device)
    with_margin = torch.cos(theta + margin)
    fallback = cos_target - margin * torch.sin(margin)
    return torch.where(theta + margin <= torch.pi, with_margin, fallback)


def target_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The entries (i, labels[i]) of ``logits`` (B, C) -> (B,)."""
    return logits.gather(1, labels[:, None]).squeeze(1)


def replace_target(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits`` with entry (i, labels[i]) replaced by target[i] (out of place, differentiable)."""
    return logits.scatter(1, labels[:, None], target[:, None].to(logits.dtype))


def npair_term(
    queries: torch.Tensor,
    ref: torch.Tensor,
    anchors: torch.Tensor,
    positives: torch.Tensor,
    neg_mask: torch.Tensor,
) -> torch.Tensor:
    """Sohn's N-pair term mean_a log(1 + Σ_{n ∈ N(a)} exp(x_aᵀx_n − x_aᵀx_p)) on raw embeddings.

    Anchors index ``queries``, positives and the columns of ``neg_mask`` (A, M) index ``ref``.
    """
    xa = queries[anchors]
    z = xa @ ref.T - (xa * ref[positives]).sum(1, keepdim=True)
    return masked_logsumexp(z, neg_mask, add_one=True).mean()


def check_miner(batchminer, tuple_kinds: tuple[str, ...], loss: str) -> None:
    """Clear error, at construction, when ``batchminer`` does not produce one of ``tuple_kinds``."""
    accepted = " or ".join(tuple_kinds)
    if batchminer is None:
        raise ValueError(f"loss '{loss}' needs a batch miner that produces {accepted}")
    kind = getattr(batchminer, "tuple_kind", None)
    if kind not in tuple_kinds:
        miner = getattr(batchminer, "name", type(batchminer).__name__)
        raise ValueError(
            f"loss '{loss}' consumes {accepted}, but miner '{miner}' produces {kind}; "
            f"pick a miner that produces {accepted}"
        )


def mine_tuples(
    batchminer, n_queries: int, ref: torch.Tensor, ref_labels: torch.Tensor
) -> tuple[torch.Tensor, ...] | None:
    """Mine on ``ref`` and keep the tuples anchored among its first ``n_queries`` rows.

    Anchors that can have no term are dropped as well (npair: no negative; lifted: no positive or
    no negative), so a loss averages over real terms only. All tensors are moved to ``ref``'s
    device. Returns the tuples, or ``None`` when nothing is left.
    """
    kind = batchminer.tuple_kind
    tuples = keep_anchors(batchminer(ref, ref_labels), kind, n_queries)
    tuples = tuple(t.to(ref.device) for t in tuples)
    if kind in (NPAIR, LIFTED):
        keep = tuples[-1].any(1) & tuples[-2].any(1) if kind == LIFTED else tuples[-1].any(1)
        tuples = tuple(t[keep] for t in tuples)
    n_terms = len(tuples[0]) + (len(tuples[2]) if kind == PAIRS else 0)
    return tuples if n_terms > 0 else None


class PairBasedLoss(nn.Module):
    """Base of the losses that compare the batch's embeddings with each other (no class table).

    ``forward`` is :meth:`cross_loss` of the batch against itself; the cross-batch memory calls
    ``cross_loss`` with the memory appended to the references. A subclass implements
    ``cross_loss(queries, q_labels, ref, ref_labels)``, where the queries are the first rows of
    ``ref``.
    """

    requires_miner = False
    supports_xbm = True
    tuple_kinds: tuple[str, ...] = ()

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids. Returns a scalar."""
        return self.cross_loss(batch, labels, batch, labels)

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


class MinedLoss(PairBasedLoss):
    """Base of the losses over a batch miner's tuples (``tuple_kinds``: the kinds it accepts).

    The miner is checked at construction and becomes a submodule (its state travels in the loss's
    state dict). :meth:`cross_loss` mines on the references, keeps the tuples anchored in the
    queries and returns a differentiable 0 when nothing is mined; otherwise the subclass's
    ``tuple_loss(tuples, queries, q_labels, ref, ref_labels)`` computes the loss.
    """

    requires_miner = True

    def __init__(self, *, batchminer) -> None:
        super().__init__()
        check_miner(batchminer, self.tuple_kinds, self.name)
        self.batchminer = batchminer

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        """Anchors among ``queries`` (= the first rows of ``ref``), partners from ``ref``."""
        tuples = mine_tuples(self.batchminer, len(queries), ref, ref_labels)
        if tuples is None:  # a 0 connected to the embeddings and to the loss's own parameters
            return sum((p.sum() * 0.0 for p in self.parameters()), zero_loss(queries))
        return self.tuple_loss(tuples, queries, q_labels, ref, ref_labels)

    def tuple_loss(
        self,
        tuples: tuple[torch.Tensor, ...],
        queries: torch.Tensor,
        q_labels: torch.Tensor,
        ref: torch.Tensor,
        ref_labels: torch.Tensor,
    ) -> torch.Tensor:
        """The loss of non-empty mined ``tuples`` (of the miner's kind, see the kinds above)."""
        raise NotImplementedError


class ClassWeightLoss(nn.Module):
    """Base of the losses with one learnable table (class weights, proxies or centres).

    The table (rows, D) is ``table``, or by default C class weights from
    :func:`init_class_weights`; it is stored as the parameter ``param`` and optimised in its own
    group ``<name>_<group>`` with learning rate :meth:`table_lr` and no weight decay. ``lr`` is
    the table's own learning rate (a ``--loss_<name>_lr`` flag), or for proxy losses the
    network's ``--lr``, which they multiply (they override :meth:`table_lr`).
    """

    requires_miner = False
    supports_xbm = False
    tuple_kinds: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        n_classes: int,
        embed_dim: int,
        lr: float,
        table: torch.Tensor | None = None,
        param: str = "class_weights",
        group: str = "weights",
    ) -> None:
        super().__init__()
        self.n_classes, self.embed_dim, self.lr = n_classes, embed_dim, lr
        self._table = (param, group)
        table = init_class_weights(n_classes, embed_dim) if table is None else table
        self.register_parameter(param, nn.Parameter(table))

    def table_lr(self) -> float:
        return self.lr

    def param_groups(self) -> list[dict]:
        param, group = self._table
        return [
            {
                "params": [getattr(self, param)],
                "lr": self.table_lr(),
                "weight_decay": 0.0,
                "name": f"{self.name}_{group}",
            }
        ]

    def checked_labels(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` on ``batch``'s device, after a clear error for ids outside [0, n_classes)."""
        check_labels(labels, self.n_classes, self.name)
        return labels.to(batch.device)

    def cosines(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, rows) cosines of the batch with the table's rows, and the checked labels on the
        batch's device."""
        labels = self.checked_labels(batch, labels)
        return cosine_logits(batch, getattr(self, self._table[0])), labels

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids in [0, n_classes). Returns a scalar."""
        raise NotImplementedError


# ---- probabilistic embeddings ------------------------------------------------------------------


def split_gaussian(batch: torch.Tensor, embed_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (B, 2D) ``[μ | log σ²]`` -> μ (B, D), log σ² (B, D)."""
    if batch.dim() != 2 or batch.shape[1] != 2 * embed_dim:
        raise ValueError(
            f"a Gaussian embedding of dimension {embed_dim} is packed as (B, {2 * embed_dim}) "
            f"[mean | log-variance]; got {tuple(batch.shape)} (--embedding_distribution gaussian?)"
        )
    return batch[:, :embed_dim], batch[:, embed_dim:]


def split_vmf(batch: torch.Tensor, embed_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (B, D + 1) ``[μ | log κ]`` -> unit μ (B, D), log κ (B,)."""
    if batch.dim() != 2 or batch.shape[1] != embed_dim + 1:
        raise ValueError(
            f"a von Mises-Fisher embedding of dimension {embed_dim} is packed as (B, {embed_dim + 1}) "
            f"[mean direction | log-concentration]; got {tuple(batch.shape)} (--embedding_distribution vmf?)"
        )
    return batch[:, :embed_dim], batch[:, embed_dim]


class SeededGenerators:
    """Mixin for an ``nn.Module`` loss that draws random numbers (Monte-Carlo samples).

    Call :meth:`init_generators` in ``__init__`` with the run's seed (context ``seed``); draw with
    ``generator=self.generator(device)``. The states of all generators are the module's extra state,
    so they are saved with the loss's ``state_dict`` and a resumed run continues the same stream; a
    state restored for a device not used yet is applied when that device is first asked for (a
    checkpoint written on a GPU loads on a CPU-only machine)."""

    def init_generators(self, seed: int) -> None:
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, torch.Tensor] = {}

    def generator(self, device: torch.device | str) -> torch.Generator:
        key = str(torch.device(device))
        if key not in self._generators:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            if key in self._pending:
                gen.set_state(self._pending.pop(key))
            self._generators[key] = gen
        return self._generators[key]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {**self._pending, **{k: g.get_state() for k, g in self._generators.items()}}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self._generators, self._pending = {}, dict(state)


# ---- Gaussian embeddings -----------------------------------------------------------------------
# Helpers of the losses over diagonal Gaussians N(μ, diag σ²) (hib, pfe, dul_cls, dul_reg, spe).
# Variances enter as log σ², and only through exp(±½·log σ²) or logaddexp, so that every value
# and gradient stays finite for log σ² anywhere in [−30, 30].

LOG_2PI = 1.8378770664093453  # log 2π


def gaussian_kl_to_standard(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_d (σ² + μ² − 1 − log σ²) of each row -> (B,)."""
    return 0.5 * (torch.exp(log_var) + mean.pow(2) - 1.0 - log_var).sum(-1)


def sample_gaussian(
    mean: torch.Tensor, log_var: torch.Tensor, n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """n reparametrised samples z = μ + ε·σ of each row -> (n, B, D).

    ε ~ N(0, I) is drawn by one ``torch.randn((n, B, D), generator=generator)`` call in μ's dtype
    and on μ's device, so a caller with a generator of the same seed reproduces the samples.
    """
    eps = torch.randn((n_samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + eps * torch.exp(0.5 * log_var)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag σ²) = −½ Σ_d ((z − μ)²/σ² + log σ² + log 2π), summed over the last dim
    (all three broadcast)."""
    return -0.5 * ((z - mean).pow(2) * torch.exp(-log_var) + log_var + LOG_2PI).sum(-1)


# ---- von Mises-Fisher --------------------------------------------------------------------------
# Numerics of the vMF distribution on the unit sphere S^{d−1} ⊂ ℝ^d (scf, vmf_fl, vmf, dsml):
#
#     vMF(z; μ, κ) = C_d(κ) exp(κ μᵀz),   log C_d(κ) = ν log κ − (d/2) log 2π − log I_ν(κ),  ν = d/2 − 1
#     A_d(κ) = I_{d/2}(κ) / I_{d/2−1}(κ) = E[μᵀz]   (mean resultant length, in [0, 1))
#
# log I_ν(x) for large orders: the uniform asymptotic (Debye) expansion, NIST DLMF 10.41.3,
#     I_ν(x) ~ e^{νη} / ((2πν)^{1/2} (1 + z²)^{1/4}) Σ_k U_k(p) / ν^k,   z = x/ν, p = (1 + z²)^{−1/2},
# with 12 terms (U_k from the recurrence DLMF 10.41.10, exact rationals), used at orders ≥ 16; it is
# uniform in x, so one formula covers every κ from 1e-300 to 1e7 (relative error < 1e-13 against
# mpmath for ν ∈ [0, 511], x ∈ [1e-3, 1e5]). Below order 16 the order is raised by m steps and
# brought back with the three-term recurrence of the ratio R_ν = I_{ν+1}/I_ν, run downwards
# (R_{ν−1} = 1/(2ν/x + R_ν), stable in that direction): log I_ν = log I_{ν+m} − Σ log R. The ratio at
# order ≥ 16 is the difference of two expansions, rearranged so that nothing cancels.
# Everything is computed in float64 (cast back to the input's dtype); the derivatives come from
# d/dκ log I_ν = R_ν + ν/κ, d/dκ log C_d = −A_d and A_d' = 1 − A_d² − (d − 1) A_d/κ, evaluated
# directly: differentiating ν log κ − log I_ν term by term would cancel two values of order ν/κ
# (ruinous in float32 at small κ).

_DEBYE_TERMS = 12
_DEBYE_MIN_ORDER = 16.0
_TINY = 1e-300  # κ is clamped here: log I_ν(κ) and its derivative stay finite as κ → 0


def _debye_polynomials(n: int) -> list[list[float]]:
    """Coefficients (by power of p) of the Debye polynomials U_0 … U_{n−1} (DLMF 10.41.10):
    U_0 = 1, U_{k+1}(p) = ½p²(1 − p²) U_k'(p) + ⅛ ∫_0^p (1 − 5t²) U_k(t) dt, in exact rationals."""
    polys = [[Fraction(1)]]
    for _ in range(n - 1):
        u = polys[-1]
        new = [Fraction(0)] * (len(u) + 3)
        for j, c in enumerate(u):
            if j > 0:  # ½ p² (1 − p²) · j c p^{j−1}
                new[j + 1] += Fraction(j, 2) * c
                new[j + 3] -= Fraction(j, 2) * c
            new[j + 1] += c / (8 * (j + 1))  # ⅛ ∫ c t^j
            new[j + 3] -= 5 * c / (8 * (j + 3))  # −⅝ ∫ c t^{j+2}
        polys.append(new)
    return [[float(c) for c in u] for u in polys]


_DEBYE_U = _debye_polynomials(_DEBYE_TERMS)


def _debye(nu: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s = √(ν² + x²), log Σ_k U_k(ν/s)/ν^k) for order ``nu`` ≥ 16 (float64)."""
    s = torch.sqrt(nu * nu + x * x)
    width = max(len(u) for u in _DEBYE_U)
    coeffs = [sum(u[j] * nu ** (-k) for k, u in enumerate(_DEBYE_U) if j < len(u)) for j in range(width)]
    p = nu / s
    series = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):  # Horner in p; the ν^{−k} are folded into the coefficients
        series = series * p + c
    return s, torch.log(series)


def _debye_log_iv(nu: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log I_ν(x) and log I_{ν+1}(x)/I_ν(x) from the Debye expansion (ν ≥ 16, float64).

    log I_ν = s + ν log(x/(ν + s)) − ½ log(2πs) + log S_ν (DLMF 10.41.3 with νη written in s). The
    ratio is the difference of the two orders' expansions regrouped without cancellation: with
    δ = s₁ − s₀ = (2ν + 1)/(s₁ + s₀),
    log R = δ + log(x/(ν + 1 + s₁)) − ν log1p((1 + δ)/(ν + s₀)) − ½ log1p(δ/s₀) + log S_{ν+1} − log S_ν.
    """
    s0, log_s0 = _debye(nu, x)
    s1, log_s1 = _debye(nu + 1.0, x)
    log_iv = s0 + nu * torch.log(x / (nu + s0)) - 0.5 * (LOG_2PI + torch.log(s0)) + log_s0
    delta = (2.0 * nu + 1.0) / (s1 + s0)
    log_ratio = (
        delta
        + torch.log(x / (nu + 1.0 + s1))
        - nu * torch.log1p((1.0 + delta) / (nu + s0))
        - 0.5 * torch.log1p(delta / s0)
        + log_s1
        - log_s0
    )
    return log_iv, log_ratio


def _log_iv_and_ratio(nu: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log I_ν(x), I_{ν+1}(x)/I_ν(x)) in float64 for any order ν ≥ 0 and x > 0."""
    steps = max(0, math.ceil(_DEBYE_MIN_ORDER - nu))
    log_iv, log_ratio = _debye_log_iv(nu + steps, x)
    ratio = torch.exp(log_ratio)
    for j in range(steps - 1, -1, -1):  # down from order ν + steps to ν, one order per step
        ratio = 1.0 / (2.0 * (nu + j + 1.0) / x + ratio)
        log_iv = log_iv - torch.log(ratio)
    return log_iv, ratio


def _float64(kappa: torch.Tensor) -> torch.Tensor:
    return kappa.detach().to(torch.float64).clamp_min(_TINY)


def _check_dim(d: int) -> None:
    if d < 2:
        raise ValueError(f"a von Mises-Fisher distribution needs dimension d >= 2, got {d}")


class _ElementwiseInKappa(torch.autograd.Function):
    """An elementwise function of κ whose forward saves its derivative in κ (computed alongside
    the value, in float64) for the backward."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (derivative,) = ctx.saved_tensors
        return grad * derivative, None


class _LogBesselIv(_ElementwiseInKappa):
    @staticmethod
    def forward(ctx, kappa: torch.Tensor, nu: float) -> torch.Tensor:
        x = _float64(kappa)
        log_iv, ratio = _log_iv_and_ratio(nu, x)
        ctx.save_for_backward((ratio + nu / x).to(kappa.dtype))
        return log_iv.to(kappa.dtype)


class _LogVmfNormalizer(_ElementwiseInKappa):
    @staticmethod
    def forward(ctx, kappa: torch.Tensor, d: int) -> torch.Tensor:
        nu, x = d / 2.0 - 1.0, _float64(kappa)
        log_iv, ratio = _log_iv_and_ratio(nu, x)
        ctx.save_for_backward((-ratio).to(kappa.dtype))
        return (nu * torch.log(x) - 0.5 * d * LOG_2PI - log_iv).to(kappa.dtype)


class _BesselRatio(_ElementwiseInKappa):
    @staticmethod
    def forward(ctx, kappa: torch.Tensor, d: int) -> torch.Tensor:
        x = _float64(kappa)
        _, ratio = _log_iv_and_ratio(d / 2.0 - 1.0, x)
        ctx.save_for_backward((1.0 - ratio * ratio - (d - 1) * (ratio / x)).to(kappa.dtype))
        return ratio.to(kappa.dtype)


def log_bessel_iv(nu: float, kappa: torch.Tensor) -> torch.Tensor:
    """log I_ν(κ), elementwise, for an order ν ≥ 0 and κ > 0; differentiable in κ
    (d/dκ log I_ν = I_{ν+1}/I_ν + ν/κ). Finite for κ up to ~1e300 (κ below 1e-300 is clamped)."""
    if nu < 0:
        raise ValueError(f"log_bessel_iv needs an order nu >= 0, got {nu}")
    return _LogBesselIv.apply(kappa, float(nu))


def log_vmf_normalizer(d: int, kappa: torch.Tensor) -> torch.Tensor:
    """log C_d(κ) = (d/2 − 1) log κ − (d/2) log 2π − log I_{d/2−1}(κ), the log-normaliser of the vMF
    density on S^{d−1} (w.r.t. the surface measure); its κ-derivative is −A_d(κ)."""
    _check_dim(d)
    return _LogVmfNormalizer.apply(kappa, int(d))


def bessel_ratio(d: int, kappa: torch.Tensor) -> torch.Tensor:
    """A_d(κ) = I_{d/2}(κ)/I_{d/2−1}(κ) = E_{z∼vMF(μ,κ)}[μᵀz], in [0, 1); differentiable
    (A_d' = 1 − A_d² − (d − 1) A_d/κ). The expected cosine of two independent vMF embeddings is
    A_d(κ₁) A_d(κ₂) μ₁ᵀμ₂."""
    _check_dim(d)
    return _BesselRatio.apply(kappa, int(d))


def sample_vmf(
    mean: torch.Tensor, kappa: torch.Tensor, n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """n samples of vMF(μ_b, κ_b) for each row of ``mean`` (B, d) (unit rows) and ``kappa`` (B,)
    -> (n, B, d), in ``mean``'s dtype, differentiable in μ and κ.

    Wood's (1994) rejection sampler, all rows at once: the component w = μᵀz is proposed as
    w = (1 − (1 + b)ε)/(1 − (1 − b)ε), ε ~ Beta((d − 1)/2, (d − 1)/2) (drawn as (1 + g₁/‖g‖)/2,
    g ~ N(0, I_d)), b = (d − 1)/(2κ + √(4κ² + (d − 1)²)), and accepted when
    κ(w − x₀) + (d − 1) log((1 − x₀w)/(1 − x₀²)) ≥ log u, u ~ U(0, 1), x₀ = (1 − b)/(1 + b); rejected
    rows are proposed again until every row has a sample. Then z' = (w, √(1 − w²) v) with v uniform on
    S^{d−2}, and the Householder reflection that maps e₁ to μ (of e₁ − μ or, when μ₁ > 0, of e₁ + μ
    followed by −1, so the reflection is never near-degenerate) gives z. 1 − w and 1 + w are
    computed in closed form from ε and b, so samples at κ = 1e5 keep their spread.
    Gradients: μ through the reflection; κ through w = h(ε, b(κ)) with the accepted ε held fixed
    (Davidson et al. 2018's reparametrised term; the rejection-correction term is left out, a
    bias of about −3 % at d = 16 and under 1 % from d = 64 on, see criteria/vmf_loss.py). All draws come from ``generator`` (float32, on ``mean``'s device; the
    arithmetic is float64), the acceptance loop included, so the same generator state gives the same
    samples, in any dtype.
    """
    n_rows, d = mean.shape
    _check_dim(d)
    device = mean.device
    f64 = dict(device=device, dtype=torch.float64)
    k = kappa.to(torch.float64).clamp_min(_TINY).repeat(n_samples)  # (n·B,): sample-major
    b = (d - 1.0) / (2.0 * k + torch.sqrt(4.0 * k * k + (d - 1.0) ** 2))
    eps = torch.empty(n_samples * n_rows, **f64)
    with torch.no_grad():
        b0, k0 = b.detach(), k.detach()
        x0 = (1.0 - b0) / (1.0 + b0)
        log_1m_x0sq = torch.log(4.0 * b0) - 2.0 * torch.log1p(b0)  # log(1 − x₀²), stable as b → 0
        todo = torch.arange(len(k0), device=device)
        while len(todo):
            g = torch.randn(len(todo), d, generator=generator, device=device).to(torch.float64)
            e = 0.5 * (1.0 + g[:, 0] / g.norm(dim=1))
            u = torch.rand(len(todo), generator=generator, device=device).to(torch.float64)
            bt, x0t = b0[todo], x0[todo]
            den = 1.0 - (1.0 - bt) * e
            one_minus_w = 2.0 * bt * e / den
            # 1 − x₀w = (1 − x₀) + x₀(1 − w), and w − x₀ = (1 − x₀) − (1 − w): no cancellation
            one_minus_x0 = 2.0 * bt / (1.0 + bt)
            log_accept = k0[todo] * (one_minus_x0 - one_minus_w) + (d - 1.0) * (
                torch.log(one_minus_x0 + x0t * one_minus_w) - log_1m_x0sq[todo]
            )
            accepted = log_accept >= torch.log(u)
            eps[todo[accepted]] = e[accepted]
            todo = todo[~accepted]
        v = torch.randn(len(k0), d - 1, generator=generator, device=device).to(torch.float64)
        v = torch.nn.functional.normalize(v, dim=1)
    den = 1.0 - (1.0 - b) * eps
    one_minus_w, one_plus_w = 2.0 * b * eps / den, 2.0 * (1.0 - eps) / den
    w = 1.0 - one_minus_w
    z = torch.cat([w[:, None], torch.sqrt(one_minus_w * one_plus_w)[:, None] * v], dim=1)
    mu = mean.to(torch.float64).repeat(n_samples, 1)
    sign = torch.where(mu[:, 0] > 0, -1.0, 1.0)[:, None]
    e1 = torch.zeros(d, **f64)
    e1[0] = 1.0
    u_vec = e1 - sign * mu  # ‖u‖² = 2(1 − sign·μ₁) ≥ 2
    z = z - 2.0 * u_vec * (u_vec * z).sum(1, keepdim=True) / u_vec.pow(2).sum(1, keepdim=True)
    return (sign * z).to(mean.dtype).reshape(n_samples, n_rows, d)
