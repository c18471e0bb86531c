"""Shared machinery of the batch miners: seeded generators, per-epoch statistics, sampling helpers.

A miner is an ``nn.Module`` called as ``miner(batch, labels)``; ``forward`` runs under
``torch.no_grad()`` on the batch's device and returns index tensors of the miner's declared
``tuple_kind`` (the kinds are defined in ``criteria/_common.py``):

* ``TRIPLETS``: ``(anchors, positives, negatives)``, three LongTensors of equal length;
* ``PAIRS``: ``(a1, p, a2, n)``, positive pairs ``(a1, p)`` and negative pairs ``(a2, n)``;
* ``NPAIR``: ``(anchors (A,), positives (A,), neg_mask (A, B) bool)``;
* ``LIFTED``: ``(anchors (A,), pos_mask (A, B) bool, neg_mask (A, B) bool)``.

When nothing can be mined the tensors are empty (length 0, masks of shape (0, B)), never ``None``.
Randomness comes from one ``torch.Generator`` per device, all seeded with ``--seed``. Their states
are the miner's extra state (``get_extra_state`` / ``set_extra_state``), so they travel in the
``state_dict()`` of whatever module holds the miner (the criterion): mining is reproducible and
resumable. No Python loop over the batch.

The distance matrix and the label masks come from ``criteria/_common.py`` (the one helper module
a copied loss takes along). Its non-squared distances are ``sqrt(max(d², 1e-12))``, so the
diagonal and coincident points read 1e-6 rather than 0; no miner depends on an exact zero there:
the diagonal is never a positive or a negative, and the squared distances (semihard, batchhard)
are exact.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from criteria._common import LIFTED, NPAIR, PAIRS, TRIPLETS, same_label_masks
from utilities.errors import ConfigError


class BatchMiner(nn.Module):
    """Base class: subclasses set ``name`` and ``tuple_kind`` and implement ``mine``.

    A subclass with hyperparameters declares them as keyword-only constructor parameters with
    defaults (each becomes a ``--miner_<name>_<parameter>`` flag) and stores them as attributes;
    ``seed`` is context (``--seed``), required, without a default.
    """

    name: str = ""
    tuple_kind: str = ""

    def __init__(self, *, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, torch.Tensor] = {}  # restored states of generators not created yet
        self.stats: dict[str, float | torch.Tensor] = {}

    def extra_repr(self) -> str:
        params = list(inspect.signature(type(self).__init__).parameters)[1:]
        return ", ".join(f"{p}={getattr(self, p)!r}" for p in params if hasattr(self, p))

    def generator(self, device: torch.device) -> torch.Generator:
        """The miner's generator on ``device`` (one per device, all seeded with ``--seed``)."""
        key = str(torch.device(device))
        if key not in self._generators:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            if key in self._pending:
                gen.set_state(self._pending.pop(key))
            self._generators[key] = gen
        return self._generators[key]

    @torch.no_grad()
    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mine ``batch`` (B, D) with ``labels`` (B,); index tensors on ``batch.device``."""
        if batch.dim() != 2 or labels.dim() != 1 or len(batch) != len(labels):
            raise ValueError(
                f"miner '{self.name}' expects batch (B, D) and labels (B,); got {tuple(batch.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if len(labels) == 0:
            return empty_result(self.tuple_kind, 0, batch.device)
        return self.mine(batch.detach(), labels.to(batch.device))

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def count(self, key: str, value: float | torch.Tensor) -> None:
        """Accumulate a per-epoch statistic (logged as ``miner_<key>`` and reset by the training loop).

        Tensors are accumulated as tensors, so counting does not force a device sync every step.
        """
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self.stats[key] = self.stats.get(key, 0.0) + value

    def pop_stats(self) -> dict[str, float]:
        stats, self.stats = self.stats, {}
        return {k: float(v) for k, v in stats.items()}

    # ---- generator states, as nn.Module extra state ----------------------------------------------
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """Generator states by device (``"cpu"``, ``"cuda:0"``, ...), including restored ones not
        applied yet."""
        return {**self._pending, **{k: g.get_state() for k, g in self._generators.items()}}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore generator states; a device's state is applied when the miner first runs there
        (so a checkpoint written on a GPU machine also loads on a CPU-only one)."""
        self._generators, self._pending = {}, dict(state)


# ---- helpers shared by the miners ------------------------------------------------------------------


def anchors_with_pos_and_neg(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchors, pos, neg): the samples with at least one other sample of their class and one
    sample of another class, and the (B, B) positive (diagonal excluded) and negative masks."""
    pos, neg = same_label_masks(labels)
    return torch.nonzero(pos.any(1) & neg.any(1)).squeeze(1), pos, neg


def check_normalized(batch: torch.Tensor, miner: str, atol: float = 1e-2) -> None:
    """Raise a readable error when the rows of ``batch`` are not (close to) unit length."""
    norms = batch.norm(dim=1)
    if len(norms) and (norms - 1.0).abs().max() > atol:
        raise ConfigError(
            f"the '{miner}' miner needs L2-normalised embeddings (an --arch ending in _normalize); "
            f"got norms in [{norms.min().item():.3f}, {norms.max().item():.3f}]"
        )


def sample_logits(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column per row, drawn with probability ∝ exp(``logits``) (−inf = never; every row
    needs one finite entry).

    Gumbel-max trick: argmax(logits + G) with G i.i.d. standard Gumbel is exactly a categorical
    draw; one ``rand`` plus elementwise ops, free of ``torch.multinomial``'s normalisation.
    """
    if len(logits) == 0:
        return empty_index(logits.device)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return (logits - u.log_().neg_().log_()).argmax(1)


def sample_rows(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column index per row, drawn with probability ∝ ``weights`` (rows must have mass > 0)."""
    return sample_logits(weights.log(), generator)


def sample_uniform(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column per row, uniformly among the True entries of ``mask`` (every row needs one).

    Argmax of i.i.d. uniform keys restricted to the mask: exactly uniform, one ``rand`` call,
    no ``multinomial`` on a 0/1 matrix.
    """
    if len(mask) == 0:
        return empty_index(mask.device)
    keys = torch.rand(mask.shape, generator=generator, device=mask.device)
    return keys.masked_fill_(~mask, -1.0).argmax(1)


def empty_index(device: torch.device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


def empty_result(kind: str, b: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """ "Nothing mined" in the layout of tuple kind ``kind`` for a batch of ``b`` samples."""
    if kind == TRIPLETS:
        return empty_triplets(device)
    if kind == PAIRS:
        return tuple(empty_index(device) for _ in range(4))
    mask = torch.zeros(0, b, dtype=torch.bool, device=device)
    if kind == NPAIR:
        return empty_index(device), empty_index(device), mask
    if kind == LIFTED:
        return empty_index(device), mask, mask.clone()
    raise ValueError(f"unknown tuple kind '{kind}'")


def empty_triplets(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return empty_index(device), empty_index(device), empty_index(device)
