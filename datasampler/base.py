"""Shared base of the batch samplers: label bookkeeping, the bs/spc check, the seeded generator.

A batch sampler yields lists of dataset indices, one list per batch. It is built as
``datasampler.select(name, opt, labels)`` and is deterministic under ``--seed``: all randomness
comes from one ``torch.Generator`` whose state is returned by ``state_dict()`` (checkpointed at
epoch boundaries, so a resumed run draws the same batches).

Samplers that keep an embedding memory set ``requires_storage = True`` and implement
``init_storage(embed_fn)`` (called once before training with a function returning (N, D)
embeddings of the training set under eval transforms) and ``update_storage(embeddings, indices)``
(called after every training step).
"""

from __future__ import annotations

from typing import Any

import torch

from utilities.errors import ConfigError


class BatchSampler(torch.utils.data.Sampler):
    """Base: subclasses set ``name``, ``Hparams`` (with bs, samples_per_class, seed) and ``__iter__``."""

    name: str = ""
    Hparams: Any = None
    requires_storage = False

    def __init__(self, labels, **hparams: Any) -> None:
        self.hp = self.Hparams(**hparams)
        bs, spc = self.hp.bs, self.hp.samples_per_class
        if spc < 1 or bs < 1 or bs % spc != 0:
            raise ConfigError(
                f"--bs {bs} must be a positive multiple of --samples_per_class {spc} "
                f"(each batch holds bs/spc classes × spc images)"
            )
        self.labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if len(self.labels) < bs:
            raise ConfigError(f"the training split has {len(self.labels)} images, fewer than --bs {bs}")
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels)
        self.class_members = [m for m in torch.split(order, counts.tolist()) if len(m) > 0]
        self.generator = torch.Generator().manual_seed(self.hp.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
