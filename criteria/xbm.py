"""Cross-batch memory (XBM): extra positives and negatives from embeddings of past batches.

Wang, Zhang, Huang, Scott. "Cross-Batch Memory for Embedding Learning." CVPR 2020.
https://arxiv.org/abs/1912.06798

A FIFO queue keeps the (detached) embeddings and labels of the last M training samples. Once the
queue is in use, every step adds a second term in which the current batch's samples are the
anchors and the references are the batch itself plus the memory:

    L = L_inner(batch, batch) + w · L_inner(batch → [batch ; memory])

and then the batch is enqueued. M = ``--xbm_size`` (0 = off), w = ``--xbm_weight`` (1), and the
memory is only used after ``--xbm_start_iteration`` training steps (0; the paper starts after a
warm-up, when embeddings have stopped drifting fast). The references are detached (as in the
paper, the gradient flows through the anchors only); with a miner, mining runs on
[batch ; memory] and keeps the tuples anchored in the batch.

The wrapped criterion must implement ``cross_loss(queries, q_labels, ref, ref_labels)`` (the
pair-, triplet-, N-pair- and lifted-type criteria do; ``supports_xbm = True``). The wrapper is a
loss wrapper, not a loss: the wrapped criterion (and its miner) stay reachable as
``xbm.criterion``. The memory is registered as buffers, so it is saved in and restored from
checkpoints. Cost: mining on B + M rows.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn


class CrossBatchMemory(nn.Module):
    """Cross-batch memory (Wang et al. 2020): wraps a pair- or tuple-based loss with a FIFO memory."""

    name = "xbm"

    def __init__(
        self,
        *,
        criterion: nn.Module,
        embed_dim: int,
        size: Annotated[int, "cross-batch memory size M (0 = off)"] = 0,
        weight: Annotated[float, "weight of the memory term"] = 1.0,
        start_iteration: Annotated[int, "training steps before the memory is used"] = 0,
    ) -> None:
        super().__init__()
        if not getattr(criterion, "supports_xbm", False):
            raise ValueError(
                f"loss '{getattr(criterion, 'name', criterion)}' does not support a cross-batch memory"
            )
        if size <= 0:
            raise ValueError(f"the cross-batch memory size must be positive, got {size}")
        self.criterion = criterion
        self.size, self.weight, self.start_iteration = int(size), float(weight), int(start_iteration)
        self.register_buffer("memory", torch.zeros(self.size, embed_dim))
        self.register_buffer("memory_labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def param_groups(self) -> list[dict]:
        """The wrapped criterion's optimizer groups (the memory has no learnable parameter)."""
        return self.criterion.param_groups() if hasattr(self.criterion, "param_groups") else []

    def forward(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """batch: (B, D) embeddings; labels: (B,) class ids. Returns a scalar."""
        labels = labels.to(batch.device)
        loss = self.criterion(batch, labels)
        n_mem = int(self.filled)
        if n_mem > 0 and int(self.iteration) >= self.start_iteration:
            ref = torch.cat([batch.detach(), self.memory[:n_mem].to(batch.dtype)])
            ref_labels = torch.cat([labels, self.memory_labels[:n_mem]])
            loss = loss + self.weight * self.criterion.cross_loss(batch, labels, ref, ref_labels)
        if self.training:
            self.enqueue(batch.detach(), labels)
            self.iteration += 1
        return loss

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the newest rows over the oldest (only the last ``size`` rows of a huge batch)."""
        embeddings, labels = embeddings[-self.size :], labels[-self.size :]
        slots = (self.pointer + torch.arange(len(labels), device=self.memory.device)) % self.size
        self.memory[slots] = embeddings.to(self.memory.dtype)
        self.memory_labels[slots] = labels.to(self.memory_labels.device)
        self.pointer.copy_((self.pointer + len(labels)) % self.size)
        self.filled.copy_(torch.clamp(self.filled + len(labels), max=self.size))
