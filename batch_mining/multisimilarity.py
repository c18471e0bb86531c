"""Multi-Similarity pair mining.

Wang, Han, Huang, Dong, Scott. "Multi-Similarity Loss with General Pair Weighting for Deep Metric
Learning." CVPR 2019, §4.1 (the mining step). https://arxiv.org/abs/1904.06627

With cosine similarities S_ij = x̂_iᵀx̂_j (embeddings L2-normalised inside the miner), an anchor
i keeps

* the negative pairs (i, j), y_j ≠ y_i, with  S_ij > min_{k ∈ P_i} S_ik − ε,
* the positive pairs (i, k), k ≠ i, y_k = y_i, with  S_ik < max_{j ∈ N_i} S_ij + ε,

with ε = ``--miner_multisimilarity_epsilon`` (0.1). An anchor without positives keeps no negative
pair and one without negatives keeps no positive pair (min/max over an empty set are +∞/−∞).
Returns pairs ``(a1, p, a2, n)``. Deterministic. (Not in the reference study, whose
multisimilarity loss mines internally.)
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from batch_mining.base import BatchMiner
from criteria._common import PAIRS, same_label_masks


class MultisimilarityMiner(BatchMiner):
    """Informative positive and negative pairs (Wang et al. 2019)."""

    name = "multisimilarity"
    tuple_kind = PAIRS

    def __init__(
        self, *, seed: int, epsilon: Annotated[float, "similarity margin ε of the pair selection"] = 0.1
    ) -> None:
        super().__init__(seed=seed)
        self.epsilon = epsilon

    def mine(self, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.normalize(batch.float(), dim=1)
        sim = x @ x.T
        pos, neg = same_label_masks(labels)
        min_pos = sim.masked_fill(~pos, float("inf")).amin(1, keepdim=True)
        max_neg = sim.masked_fill(~neg, float("-inf")).amax(1, keepdim=True)
        keep_neg = neg & (sim > min_pos - self.epsilon)
        keep_pos = pos & (sim < max_neg + self.epsilon)
        a1, p = keep_pos.nonzero(as_tuple=True)
        a2, n = keep_neg.nonzero(as_tuple=True)
        return a1, p, a2, n
