"""Shared scaffold of the batch-matching samplers (``disthist_batchmatch``, ``fid_batchmatch``).

Roth et al., ICML 2020, §4 ("batch matching" samplers). https://arxiv.org/abs/2002.08473

Per batch: a class-structured big batch B (``--data_batchmatch_bigbs`` / K distinct random classes
× K = samples_per_class images, see ``storage.py``) and ``--data_batchmatch_ncomps`` (10) candidate
batches b, each made of bs / K of B's class groups drawn without replacement. The candidate whose
memory embeddings minimise the subclass's ``cost`` against the big batch's is the batch.
"""

from __future__ import annotations

from typing import Annotated

import torch

from datasampler.base import Labels
from datasampler.storage import BigBs, LowprojDim, NoUpdate, StorageSampler
from utilities.errors import ConfigError
from utilities.registry import Flag


class BatchMatchSampler(StorageSampler):
    """Structured big batch, ``ncomps`` candidate batches, keep the one of lowest ``cost``."""

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
        ncomps: Annotated[
            int, Flag("number of candidate batches compared", name="data_batchmatch_ncomps")
        ] = 10,
    ) -> None:
        super().__init__(
            labels=labels,
            bs=bs,
            samples_per_class=samples_per_class,
            seed=seed,
            bigbs=bigbs,
            no_update=no_update,
            lowproj_dim=lowproj_dim,
        )
        if ncomps < 1:
            raise ConfigError(f"--data_batchmatch_ncomps must be ≥ 1, got {ncomps}")
        self.ncomps = ncomps

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(big batch (G, K), candidate batches (ncomps, P, K)) as dataset indices."""
        big = self.structured_big_batch()
        p = self.bs // self.samples_per_class
        keys = torch.rand(self.ncomps, len(big), generator=self.generator)
        choice = torch.topk(keys, p, dim=1, largest=False).indices
        return big, big[choice]

    def cost(self, x_big: torch.Tensor, x_cand: torch.Tensor) -> torch.Tensor:
        """(ncomps,) cost of each candidate: ``x_big`` (n, D), ``x_cand`` (ncomps, m, D) features."""
        raise NotImplementedError

    def next_batch(self) -> torch.Tensor:
        big, cand = self.candidates()
        x_big = self.features(big.reshape(-1))
        x_cand = self.features(cand.reshape(-1)).view(len(cand), -1, x_big.shape[1])
        return cand[self.cost(x_big, x_cand).argmin()]
