"""Batch samplers: one file per sampler, plus this registry.

``sampler = select(name, opt, labels)`` returns a ``torch.utils.data.Sampler`` yielding lists of
dataset indices (pass it as ``batch_sampler=`` to a DataLoader). Every sampler has
``init_storage(embed_fn)`` and ``update_storage(embeddings, indices)``; they do something only for
the samplers that keep an embedding memory (see ``datasampler/storage.py``).
"""

from __future__ import annotations

import argparse

from datasampler import (
    class_random,
    d2_coreset,
    disthist_batchmatch,
    fid_batchmatch,
    full_random,
    greedy_coreset,
    pk,
)
from datasampler.base import BatchSampler, Labels
from utilities.registry import Registry

REGISTRY = Registry("data sampler", flag_prefix="data")
for _cls in (
    class_random.ClassRandomSampler,
    d2_coreset.D2CoresetSampler,
    disthist_batchmatch.DisthistBatchmatchSampler,
    fid_batchmatch.FidBatchmatchSampler,
    full_random.FullRandomSampler,
    greedy_coreset.GreedyCoresetSampler,
    pk.PKSampler,
):
    REGISTRY.add(_cls)


def select(name: str, opt: argparse.Namespace, labels: Labels) -> BatchSampler:
    """Build sampler ``name`` over the training ``labels`` (N,): hyperparameters from ``opt``,
    with ``opt.bs``, ``opt.samples_per_class`` and ``opt.seed`` as context."""
    return REGISTRY.build(
        name, opt, labels=labels, bs=opt.bs, samples_per_class=opt.samples_per_class, seed=opt.seed
    )
