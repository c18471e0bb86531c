"""Shared base of the batch samplers: label bookkeeping, the bs/spc check, the seeded generator.

A batch sampler yields lists of dataset indices, one list per batch. It is built as
``datasampler.select(name, opt, labels)`` and is deterministic under ``--seed``: all randomness
comes from one ``torch.Generator`` whose state is returned by ``state_dict()`` (checkpointed at
epoch boundaries, so a resumed run draws the same batches).

The training loop calls ``init_storage(embed_fn)`` once before training and
``update_storage(embeddings, indices)`` after every step, for every sampler: both are no-ops here,
and only the samplers that keep an embedding memory (``datasampler/storage.py``) override them, so
only those ever call ``embed_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from utilities.errors import ConfigError

Labels = torch.Tensor | Sequence[int]  # class ids (or dataset indices) as a tensor, array or list


class BatchSampler(torch.utils.data.Sampler):
    """Base: subclasses set ``name`` and implement ``__iter__`` (and ``__len__``).

    Context (required, given by ``datasampler.select``): the training ``labels`` (N,), ``bs``,
    ``samples_per_class`` and ``seed``. A subclass with hyperparameters declares them as
    keyword-only constructor parameters with defaults (each one a flag) and stores them as
    attributes.
    """

    name: str = ""

    def __init__(self, *, labels: Labels, bs: int, samples_per_class: int, seed: int) -> None:
        if samples_per_class < 1 or bs < 1 or bs % samples_per_class != 0:
            raise ConfigError(
                f"--bs {bs} must be a positive multiple of --samples_per_class {samples_per_class} "
                f"(each batch holds bs/spc classes × spc images)"
            )
        self.bs, self.samples_per_class, self.seed = bs, samples_per_class, seed
        self.labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if self.labels.dim() != 1 or len(self.labels) == 0 or (self.labels < 0).any():
            raise ConfigError("the sampler needs a non-empty 1-D vector of non-negative class labels")
        if len(self.labels) < bs:
            raise ConfigError(f"the training split has {len(self.labels)} images, fewer than --bs {bs}")
        self.classes = ClassIndex(self.labels)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def class_members(self) -> list[torch.Tensor]:
        """Dataset indices of each class present (one tensor per class)."""
        return [row[: int(n)] for row, n in zip(self.classes.members, self.classes.counts, strict=True)]

    def init_storage(self, embed_fn: Callable[[], torch.Tensor]) -> None:
        """Called once before training; ``embed_fn()`` returns (N, D) eval-transform embeddings of
        the training set. A no-op here: ``embed_fn`` is only called by samplers that keep a memory."""

    def update_storage(self, embeddings: torch.Tensor, indices: Labels) -> None:
        """Called after every training step with the batch's (B, D) embeddings and (B,) dataset
        indices. A no-op here (samplers that keep a memory overwrite its rows)."""

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class ClassIndex:
    """Vectorised per-class bookkeeping of a label vector.

    ``members``: (C, M) dataset indices of each present class, padded with -1 (M = largest class);
    ``counts``: (C,); ``row_of``: (N,) class row of every sample; ``rank``: (N,) position of
    every sample inside its class row.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        order = torch.argsort(labels, stable=True)
        _, row_of_sorted, counts = torch.unique_consecutive(
            labels[order], return_inverse=True, return_counts=True
        )
        starts = torch.cumsum(counts, 0) - counts
        rank_sorted = torch.arange(len(labels)) - starts[row_of_sorted]
        self.counts = counts
        self.members = torch.full((len(counts), int(counts.max())), -1, dtype=torch.long)
        self.members[row_of_sorted, rank_sorted] = order
        self.row_of = torch.empty_like(labels)
        self.row_of[order] = row_of_sorted
        self.rank = torch.empty_like(labels)
        self.rank[order] = rank_sorted

    def __len__(self) -> int:
        return len(self.counts)

    def draw(
        self, rows: torch.Tensor, k: int, generator: torch.Generator, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(n, k) dataset indices: k members of each class row in ``rows``.

        Without replacement when the class has k members to spare (not counting ``exclude``, an
        optional (n,) dataset index per row that must not be drawn), with replacement otherwise;
        a class whose only member is excluded returns that member.
        """
        n = len(rows)
        counts = self.counts[rows]
        members = self.members[rows]
        valid = members >= 0
        if exclude is not None:
            valid &= members != exclude[:, None]
        avail = valid.sum(1)
        keys = torch.rand(members.shape, generator=generator).masked_fill_(~valid, 2.0)
        pos = torch.topk(keys, min(k, members.shape[1]), dim=1, largest=False).indices
        without = members.gather(1, pos)
        if without.shape[1] < k:
            without = torch.cat([without, without[:, :1].expand(n, k - without.shape[1])], 1)
        # with replacement: the r-th allowed member of the row, r uniform
        n_avail = avail.clamp_min(1)[:, None]
        r = torch.minimum((torch.rand(n, k, generator=generator) * n_avail).long(), n_avail - 1)
        if exclude is not None:
            r = r + (r >= self.rank[exclude][:, None]).long() * (counts > 1)[:, None].long()
        with_repl = members.gather(1, r.clamp_max(members.shape[1] - 1))
        return torch.where((avail >= k)[:, None], without, with_repl)
