"""Shared machinery of the batch miners: seeded generator, per-epoch statistics, sampling helpers.

A miner is called as ``miner(batch, labels)`` under ``torch.no_grad()`` on the batch's device and
returns index tensors of its declared ``tuple_kind`` (see ``criteria/_common.py``). Randomness
comes from one ``torch.Generator`` per device, seeded from ``--seed``, whose state is part of the
checkpoint, so mining is reproducible and resumable. No Python loop over the batch anywhere.
"""

from __future__ import annotations

from typing import Any

import torch


class BatchMiner:
    """Base class: subclasses set ``name``, ``tuple_kind``, optionally ``Hparams``, and ``mine``."""

    name: str = ""
    tuple_kind: str = ""
    Hparams: Any = None

    def __init__(self, seed: int = 0, **hparams: Any) -> None:
        self.hp = self.Hparams(**hparams) if self.Hparams is not None else None
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self.stats: dict[str, float] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = batch.detach()
        return self.mine(batch, labels.to(batch.device))

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def count(self, key: str, value: float) -> None:
        """Accumulate a per-epoch statistic (logged and reset by the training loop)."""
        self.stats[key] = self.stats.get(key, 0.0) + float(value)

    def pop_stats(self) -> dict[str, float]:
        stats, self.stats = self.stats, {}
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {k: g.get_state() for k, g in self._generators.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, gen_state in state.items():
            self.generator(torch.device(key)).set_state(gen_state)


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix with exact zeros on the diagonal."""
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    d2.fill_diagonal_(0.0)
    return d2.sqrt()


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask excluding the diagonal, negative mask), both (B, B) bool."""
    same = labels[:, None] == labels[None, :]
    same_no_diag = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same_no_diag, ~same


def sample_rows(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column index per row, drawn with probability ∝ ``weights`` (rows must have mass > 0)."""
    if len(weights) == 0:
        return torch.empty(0, dtype=torch.long, device=weights.device)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def empty_triplets(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e = torch.empty(0, dtype=torch.long, device=device)
    return e, e.clone(), e.clone()
