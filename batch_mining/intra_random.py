"""Control experiment of the study: "triplets" drawn from inside one class.

Roth et al., ICML 2020 (the "intra_random" control). https://arxiv.org/abs/2002.08473

B times: a class present in the batch is drawn uniformly, then (a, p, n) are drawn uniformly from
that class's samples, with replacement (so a = p or a = n can happen, and the "negative" always
shares the anchor's class). Losses then see only same-class tuples.

Deviations from the reference implementation: its ``name`` is ``intra_random`` (the reference
claimed "random" to pass the loss checks; compatibility is now checked on the tuple kind);
vectorised (O(B): classes sorted once, then offsets drawn inside the drawn classes).
"""

from __future__ import annotations

import torch

from batch_mining.base import BatchMiner
from criteria._common import TRIPLETS


class IntraRandomMiner(BatchMiner):
    """B triplets whose three members all come from one random class of the batch."""

    name = "intra_random"
    tuple_kind = TRIPLETS

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gen = self.generator(batch.device)
        order = torch.argsort(labels, stable=True)
        _, counts = torch.unique_consecutive(labels[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        drawn = torch.randint(len(counts), (len(labels),), generator=gen, device=batch.device)
        n_drawn = counts[drawn][:, None]
        offset = (torch.rand(len(labels), 3, generator=gen, device=batch.device) * n_drawn).long()
        offset = torch.minimum(offset, n_drawn - 1)  # u·n can round up to n in float32
        a, p, n = order[starts[drawn][:, None] + offset].unbind(1)
        return a, p, n
