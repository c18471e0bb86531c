"""The one small helper module the criteria share (copy it along with a criterion file).

Only torch is imported, so ``criteria/<loss>.py`` + this file can be dropped into any pipeline.
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
    """cos(x_i, w_c) for all samples and classes: (B, D) × (C, D) -> (B, C), O(B·C) memory."""
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


def replace_target(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits`` with entry (i, labels[i]) replaced by target[i] (out of place, differentiable)."""
    return logits.scatter(1, labels[:, None], target[:, None].to(logits.dtype))


class PairBasedLoss(nn.Module):
    """Base of the losses that compare the batch's embeddings with each other (no class proxies).

    ``forward`` is :meth:`cross_loss` of the batch against itself; cross-batch memory calls
    ``cross_loss`` with the memory as the reference set. A subclass sets ``Hparams`` (its
    hyperparameter dataclass) and implements ``cross_loss(queries, q_labels, ref, ref_labels)``.
    """

    Hparams: type

    def __init__(self, batchminer=None, **hparams) -> None:
        super().__init__()
        self.hp = self.Hparams(**hparams)
        self.batchminer = batchminer

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids. Returns a scalar."""
        return self.cross_loss(batch, labels, batch, labels)

    def cross_loss(
        self, queries: torch.Tensor, q_labels: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError
