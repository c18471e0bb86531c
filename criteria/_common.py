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
state in the loss's state dict), so a resumed run draws the same samples.
"""

from __future__ import annotations

import torch
from torch import nn

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
