"""The one small helper module the criteria share (copy it along with a criterion file).

Only torch is imported, so ``criteria/<loss>.py`` + this file can be dropped into any pipeline.
"""

from __future__ import annotations

import torch

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


def row_distances(a: torch.Tensor, b: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
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
