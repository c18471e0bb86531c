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
same memory; ``init_storage`` then keeps the restored memory instead of re-embedding. A batch that
holds a dataset index more than once writes the embedding of its last occurrence (one defined
winner, so the memory, and every batch drawn from it, is reproducible).

The storage hyperparameters are declared once here as ``BigBs``, ``NoUpdate`` and ``LowprojDim``
(shared flags); each registered storage sampler lists them in its own constructor signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import torch

from datasampler.base import BatchSampler, Labels
from utilities.errors import ConfigError
from utilities.registry import Flag

# next_pick(available (n,) bool, last pick) -> next position, for pick_without_class_repeats
PickFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

BigBs = Annotated[int, Flag("size of the big batch a batch is chosen from", name="data_batchmatch_bigbs")]
NoUpdate = Annotated[
    bool, Flag("keep the initial embedding memory (no per-step update)", name="data_storage_no_update")
]
LowprojDim = Annotated[
    int, Flag("if > 0, compare embeddings after a random projection", name="data_sampler_lowproj_dim")
]


class StorageSampler(BatchSampler):
    """Base of the samplers that pick batches from an embedding memory."""

    def __init__(
        self,
        *,
        labels: Labels,
        bs: int,
        samples_per_class: int,
        seed: int,
        bigbs: BigBs = 512,
        no_update: NoUpdate = False,
        lowproj_dim: LowprojDim = -1,
    ) -> None:
        super().__init__(labels=labels, bs=bs, samples_per_class=samples_per_class, seed=seed)
        if bigbs < bs:
            raise ConfigError(f"--data_batchmatch_bigbs {bigbs} must be at least --bs {bs}")
        self.bigbs, self.no_update, self.lowproj_dim = bigbs, no_update, lowproj_dim
        self.big_size = min(bigbs, len(self.labels))  # the big batch cannot exceed the dataset
        self.storage: torch.Tensor | None = None
        self.projection: torch.Tensor | None = None
        self._restored = False

    def __len__(self) -> int:
        return len(self.labels) // self.bs

    # ---- the memory ------------------------------------------------------------------------------
    def init_storage(self, embed_fn: Callable[[], torch.Tensor]) -> None:
        """Fill the memory with ``embed_fn()`` ((N, D) embeddings), unless restored from a checkpoint."""
        if self._restored:
            return
        emb = torch.as_tensor(embed_fn()).detach().float().cpu()
        if emb.dim() != 2 or len(emb) != len(self.labels):
            raise ValueError(f"init_storage needs ({len(self.labels)}, D) embeddings, got {tuple(emb.shape)}")
        self.storage = emb.clone()
        if self.lowproj_dim > 0:
            d = self.lowproj_dim
            self.projection = torch.randn(emb.shape[1], d, generator=self.generator) / d**0.5

    def update_storage(self, embeddings: torch.Tensor, indices: Labels) -> None:
        """Overwrite the memory rows ``indices`` (B,) with ``embeddings`` (B, D) after a training step.

        An index repeated in the batch gets the embedding of its last occurrence: a plain
        ``storage[idx] = embeddings`` leaves the winner among duplicates undefined.
        """
        if self.no_update or self.storage is None:
            return
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        emb = embeddings.detach().float().cpu()
        if idx.dim() != 1 or len(idx) != len(emb):
            raise ValueError(
                f"update_storage needs (B,) indices for (B, D) embeddings, got indices "
                f"{tuple(idx.shape)} and embeddings {tuple(emb.shape)}"
            )
        if len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < len(self.storage)):
            raise IndexError(f"update_storage: dataset indices must lie in [0, {len(self.storage)})")
        last = last_occurrences(idx)
        self.storage[idx[last]] = emb[last]

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
        """``min(bigbs, N)`` distinct dataset indices, uniformly at random."""
        return torch.randperm(len(self.labels), generator=self.generator)[: self.big_size]

    def complete_classes(self, picks: torch.Tensor) -> torch.Tensor:
        """(P, K) batch: each picked dataset index followed by K − 1 other images of its class."""
        k = self.samples_per_class
        if k == 1:
            return picks[:, None]
        rows = self.classes.row_of[picks]
        return torch.cat([picks[:, None], self.classes.draw(rows, k - 1, self.generator, exclude=picks)], 1)

    def structured_big_batch(self) -> torch.Tensor:
        """(big_size / K, K): distinct random classes (if there are enough) × K images each."""
        k = self.samples_per_class
        n_cls = self.big_size // k
        if n_cls <= len(self.classes):
            keys = torch.rand(len(self.classes), generator=self.generator)
            rows = torch.topk(keys, n_cls, largest=False).indices
        else:
            rows = torch.randint(len(self.classes), (n_cls,), generator=self.generator)
        return self.classes.draw(rows, k, self.generator)


class CoresetSampler(StorageSampler):
    """Base of the coreset samplers: sequential picks from a random big batch, each pick's class
    completed to K images (see :func:`pick_without_class_repeats`)."""

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, PickFn]:
        """For the big batch's features ``x`` (n, D): the first position and the ``next_pick``
        function of :func:`pick_without_class_repeats`."""
        raise NotImplementedError

    def next_batch(self) -> torch.Tensor:
        big = self.random_big_batch()
        rows = self.classes.row_of[big]
        first, next_pick = self.start(self.features(big))
        same_class = rows[:, None] == rows[None, :]
        picks = pick_without_class_repeats(next_pick, first, same_class, self.bs // self.samples_per_class)
        return self.complete_classes(big[picks])


def last_occurrences(idx: torch.Tensor) -> torch.Tensor:
    """Positions in ``idx`` (1-D) of the last occurrence of each distinct value (vectorised)."""
    order = torch.argsort(idx, stable=True)  # equal values keep their batch order
    sorted_idx = idx[order]
    is_last = torch.ones_like(sorted_idx, dtype=torch.bool)
    is_last[:-1] = sorted_idx[1:] != sorted_idx[:-1]
    return order[is_last]


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(..., n, n) squared Euclidean distances with exact zeros on the diagonal."""
    sq = x.pow(2).sum(-1)
    d2 = torch.matmul(x, x.transpose(-1, -2)).mul_(-2.0).add_(sq[..., :, None]).add_(sq[..., None, :])
    d2.clamp_min_(0.0).diagonal(dim1=-2, dim2=-1).zero_()
    return d2


def pick_without_class_repeats(
    scores_fn: PickFn,
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
