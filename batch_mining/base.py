"""Shared machinery of the batch miners: seeded generator, per-epoch statistics, sampling helpers.

A miner is called as ``miner(batch, labels)`` under ``torch.no_grad()`` on the batch's device and
returns index tensors of its declared ``tuple_kind`` (see ``criteria/_common.py``):

* ``"triplets"``: ``(anchors, positives, negatives)``, three LongTensors of equal length;
* ``"pairs"``: ``(a1, p, a2, n)``, positive pairs ``(a1, p)`` and negative pairs ``(a2, n)``;
* ``"npair"``: ``(anchors (A,), positives (A,), neg_mask (A, B) bool)``;
* ``"lifted"``: ``(anchors (A,), pos_mask (A, B) bool, neg_mask (A, B) bool)``.

When nothing can be mined the tensors are empty (length 0, masks of shape (0, B)), never ``None``.
Randomness comes from one ``torch.Generator`` per device, seeded from ``--seed``, whose state is
part of the checkpoint, so mining is reproducible and resumable. No Python loop over the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from utilities.errors import ConfigError


class BatchMiner:
    """Base class: subclasses set ``name``, ``tuple_kind``, optionally ``Hparams``, and ``mine``."""

    name: str = ""
    tuple_kind: str = ""
    Hparams: Any = None

    def __init__(self, **hparams: Any) -> None:
        self.hp = self.Hparams(**hparams) if self.Hparams is not None else None
        self.seed = int(getattr(self.hp, "seed", 0))
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, torch.Tensor] = {}  # restored states of generators not created yet
        self.stats: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hp})"

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
    def __call__(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
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

    def state_dict(self) -> dict[str, Any]:
        return {**self._pending, **{k: g.get_state() for k, g in self._generators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore generator states; a device's state is applied when the miner first runs there
        (so a checkpoint written on a GPU machine also loads on a CPU-only one)."""
        self._generators, self._pending = {}, dict(state)


# ---- helpers shared by the miners ------------------------------------------------------------------


def pairwise_distances(x: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Euclidean distance matrix (B, B) with exact zeros on the diagonal."""
    sq = x.pow(2).sum(1)
    d2 = torch.addmm(sq[:, None] + sq[None, :], x, x.T, alpha=-2.0).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    return d2 if squared else d2.sqrt_()


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask excluding the diagonal, negative mask), both (B, B) bool."""
    same = labels[:, None] == labels[None, :]
    pos = same.clone()
    pos.fill_diagonal_(False)
    return pos, ~same


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
    draw; one ``rand`` plus elementwise ops, several times faster than ``torch.multinomial`` on
    CPU and free of its normalisation.
    """
    if len(logits) == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return (logits - u.log_().neg_().log_()).argmax(1)


def sample_rows(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column index per row, drawn with probability ∝ ``weights`` (rows must have mass > 0)."""
    return sample_logits(weights.log(), generator)


def sample_uniform(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column per row, uniformly among the True entries of ``mask`` (every row needs one).

    Argmax of i.i.d. uniform keys restricted to the mask: exactly uniform, one ``rand`` call,
    cheaper than ``multinomial`` on a 0/1 matrix.
    """
    if len(mask) == 0:
        return torch.empty(0, dtype=torch.long, device=mask.device)
    keys = torch.rand(mask.shape, generator=generator, device=mask.device)
    return keys.masked_fill_(~mask, -1.0).argmax(1)


def empty_index(device: torch.device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


def empty_result(kind: str, b: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """ "Nothing mined" in the layout of tuple kind ``kind`` for a batch of ``b`` samples."""
    if kind == "triplets":
        return empty_triplets(device)
    if kind == "pairs":
        return tuple(empty_index(device) for _ in range(4))
    mask = torch.zeros(0, b, dtype=torch.bool, device=device)
    if kind == "npair":
        return empty_index(device), empty_index(device), mask
    if kind == "lifted":
        return empty_index(device), mask, mask.clone()
    raise ValueError(f"unknown tuple kind '{kind}'")


def empty_triplets(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return empty_index(device), empty_index(device), empty_index(device)
