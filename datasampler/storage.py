"""Shared machinery of the storage-based samplers (coresets and batch matching).

These samplers choose batches from an embedding *memory* of the whole training set
(Roth et al., ICML 2020, §4 "batch sampling"): ``init_storage(embed_fn)`` fills it once before
training with eval-transform embeddings, and ``update_storage(embeddings, indices)`` overwrites the
rows of every training batch with their (train-mode, augmented) embeddings after each step, unless
``--data_storage_no_update``. With ``--data_sampler_lowproj_dim d > 0`` the memory is compared
through a fixed random Gaussian projection to d dimensions (Johnson–Lindenstrauss), drawn once
from the sampler's generator.

Each batch starts from a random "big batch" of ``--data_batchmatch_bigbs`` (512) images; the
subclass picks ``bs`` of them. Indices selected inside the big batch are mapped back through the
*same* big-batch index array (the reference mapped them through a different random array, which
made its coreset selection effectively random). One epoch is ``len(dataset) // bs`` batches.

The memory and the projection are part of ``state_dict()``, so a resumed run continues with the
same memory; ``init_storage`` then keeps the restored memory instead of re-embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from datasampler.base import BatchSampler, Labels
from utilities.errors import ConfigError


@dataclass
class StorageHparams:
    bs: int = field(default=112, metadata={"global": "bs"})
    samples_per_class: int = field(default=2, metadata={"global": "samples_per_class"})
    seed: int = field(default=0, metadata={"global": "seed"})
    bigbs: int = field(
        default=512,
        metadata={"flag": "data_batchmatch_bigbs", "help": "size of the big batch a batch is chosen from"},
    )
    no_update: bool = field(
        default=False,
        metadata={
            "flag": "data_storage_no_update",
            "help": "keep the initial embedding memory (no per-step update)",
        },
    )
    lowproj_dim: int = field(
        default=-1,
        metadata={
            "flag": "data_sampler_lowproj_dim",
            "help": "if > 0, compare embeddings after a random projection",
        },
    )


class StorageSampler(BatchSampler):
    """Base of the samplers that pick batches from an embedding memory."""

    requires_storage = True

    def __init__(self, labels: Labels, **hparams: Any) -> None:
        super().__init__(labels, **hparams)
        self.bigbs = min(self.hp.bigbs, len(self.labels))
        if self.bigbs < self.hp.bs:
            raise ConfigError(f"--data_batchmatch_bigbs {self.hp.bigbs} must be at least --bs {self.hp.bs}")
        self.storage: torch.Tensor | None = None
        self.projection: torch.Tensor | None = None
        self._restored = False

    def __len__(self) -> int:
        return len(self.labels) // self.hp.bs

    # ---- the memory ------------------------------------------------------------------------------
    def init_storage(self, embed_fn: Callable[[], torch.Tensor]) -> None:
        """Fill the memory with ``embed_fn()`` ((N, D) embeddings), unless restored from a checkpoint."""
        if self._restored:
            return
        emb = torch.as_tensor(embed_fn()).detach().float().cpu()
        if emb.dim() != 2 or len(emb) != len(self.labels):
            raise ValueError(f"init_storage needs ({len(self.labels)}, D) embeddings, got {tuple(emb.shape)}")
        self.storage = emb.clone()
        if self.hp.lowproj_dim > 0:
            d = self.hp.lowproj_dim
            self.projection = torch.randn(emb.shape[1], d, generator=self.generator) / d**0.5

    def update_storage(self, embeddings: torch.Tensor, indices: Labels) -> None:
        """Overwrite the memory rows ``indices`` with ``embeddings`` (after a training step)."""
        if self.hp.no_update or self.storage is None:
            return
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        self.storage[idx] = embeddings.detach().float().cpu()

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.storage[idx]
        return x @ self.projection if self.projection is not None else x

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "storage": self.storage, "projection": self.projection}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.storage, self.projection = state.get("storage"), state.get("projection")
        self._restored = self.storage is not None

    # ---- batches ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        if self.storage is None:
            raise RuntimeError(f"sampler '{self.name}': call init_storage(embed_fn) before iterating")
        for _ in range(len(self)):
            yield self.next_batch().reshape(-1).tolist()

    def next_batch(self) -> torch.Tensor:
        """Dataset indices of one batch (any shape; flattened by ``__iter__``)."""
        raise NotImplementedError

    def random_big_batch(self) -> torch.Tensor:
        """``bigbs`` distinct dataset indices, uniformly at random."""
        return torch.randperm(len(self.labels), generator=self.generator)[: self.bigbs]

    def complete_classes(self, picks: torch.Tensor) -> torch.Tensor:
        """(P, K) batch: each picked dataset index followed by K − 1 other images of its class."""
        k = self.hp.samples_per_class
        if k == 1:
            return picks[:, None]
        rows = self.classes.row_of[picks]
        return torch.cat([picks[:, None], self.classes.draw(rows, k - 1, self.generator, exclude=picks)], 1)

    def structured_big_batch(self) -> torch.Tensor:
        """(bigbs / K, K): distinct random classes (if there are enough) × K images each."""
        k = self.hp.samples_per_class
        n_cls = self.bigbs // k
        if n_cls <= len(self.classes):
            keys = torch.rand(len(self.classes), generator=self.generator)
            rows = torch.topk(keys, n_cls, largest=False).indices
        else:
            rows = torch.randint(len(self.classes), (n_cls,), generator=self.generator)
        return self.classes.draw(rows, k, self.generator)


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(..., n, n) squared Euclidean distances with exact zeros on the diagonal."""
    sq = x.pow(2).sum(-1)
    d2 = torch.matmul(x, x.transpose(-1, -2)).mul_(-2.0).add_(sq[..., :, None]).add_(sq[..., None, :])
    d2.clamp_min_(0.0).diagonal(dim1=-2, dim2=-1).zero_()
    return d2


def pick_without_class_repeats(
    scores_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    first: torch.Tensor,
    same_class: torch.Tensor,
    n_pick: int,
) -> torch.Tensor:
    """Sequential selection of ``n_pick`` big-batch positions, one class at most once.

    ``scores_fn(available, last_pick)`` returns the next position given the (n,) mask of allowed
    positions and the previous pick. When every class of the big batch has been used, repeats are
    allowed again (only positions not yet picked stay excluded).
    """
    picked = torch.zeros(len(same_class), dtype=torch.bool)
    blocked = torch.zeros_like(picked)
    # k-center greedy and D² seeding are sequential by definition (each pick depends on the previous
    # ones): one small vectorised step per pick, bs / K steps per batch
    picks, last = [first], first
    picked[first] = True
    blocked |= same_class[first]
    for _ in range(n_pick - 1):
        available = ~blocked & ~picked
        if not bool(available.any()):
            blocked = picked.clone()
            available = ~picked
        last = scores_fn(available, last)
        picks.append(last)
        picked[last] = True
        blocked |= same_class[last]
    return torch.stack(picks)
