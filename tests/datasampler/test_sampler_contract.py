"""The sampler plugin contract: context vs. flags, no-op memory hooks, deterministic memory writes."""

from __future__ import annotations

import argparse

import pytest
import torch

import datasampler
from datasampler.base import BatchSampler
from datasampler.storage import StorageSampler, last_occurrences

NAMES = datasampler.REGISTRY.names()
CONTEXT = ["labels", "bs", "samples_per_class", "seed"]
# the sampler flags and their defaults as the reference study's commands know them
SAMPLER_FLAG_DEFAULTS = {
    "data_batchmatch_bigbs": 512,
    "data_batchmatch_ncomps": 10,
    "data_d2_coreset_lambda": 1.0,
    "data_gc_softened": False,
    "data_sampler_lowproj_dim": -1,
    "data_storage_no_update": False,
}


def labels_of(n_classes: int = 12, per_class: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.arange(n_classes).repeat_interleave(per_class)[
        torch.randperm(n_classes * per_class, generator=g)
    ]


def test_registry_flags_have_the_reference_names_and_defaults():
    parser = argparse.ArgumentParser()
    datasampler.REGISTRY.add_args(parser)
    assert vars(parser.parse_args([])) == SAMPLER_FLAG_DEFAULTS


@pytest.mark.parametrize("name", NAMES)
def test_context_is_required_and_hyperparameters_are_attributes(name):
    assert datasampler.REGISTRY.context(name) == CONTEXT
    cls = datasampler.REGISTRY.get(name)
    with pytest.raises(TypeError):
        cls(labels=labels_of(), bs=8, samples_per_class=2)  # no seed
    sampler = cls(labels=labels_of(), bs=8, samples_per_class=2, seed=0)
    assert not hasattr(sampler, "hp") and not hasattr(sampler, "requires_storage")
    assert (sampler.bs, sampler.samples_per_class, sampler.seed) == (8, 2, 0)
    for hp in datasampler.REGISTRY.hyperparameters(name):
        assert getattr(sampler, hp.param) == hp.default


def test_select_takes_the_context_from_the_namespace():
    opt = argparse.Namespace(bs=12, samples_per_class=3, seed=5, **SAMPLER_FLAG_DEFAULTS)
    opt.data_batchmatch_bigbs, opt.data_gc_softened = 24, True
    sampler = datasampler.select("greedy_coreset", opt, labels_of())
    assert (sampler.bs, sampler.samples_per_class, sampler.seed) == (12, 3, 5)
    assert sampler.bigbs == 24 and sampler.softened is True and sampler.lowproj_dim == -1
    pk = datasampler.select("pk", opt, labels_of())
    assert (pk.p, pk.k) == (4, 3)


@pytest.mark.parametrize(
    "name", sorted(n for n, c in datasampler.REGISTRY if not issubclass(c, StorageSampler))
)
def test_memory_hooks_are_no_ops_without_a_memory(name):
    sampler = datasampler.REGISTRY.get(name)(labels=labels_of(), bs=8, samples_per_class=2, seed=0)
    assert type(sampler).init_storage is BatchSampler.init_storage
    sampler.init_storage(lambda: 1 / 0)  # embed_fn is never called
    sampler.update_storage(torch.ones(2, 4), torch.tensor([0, 0]))
    state = sampler.state_dict()
    assert set(state) == {"generator"}


def test_last_occurrences_is_the_last_position_of_each_value():
    idx = torch.tensor([4, 2, 4, 7, 2, 4])
    assert last_occurrences(idx).tolist() == [4, 5, 3]  # values 2, 4, 7 in increasing order
    assert last_occurrences(torch.tensor([], dtype=torch.long)).tolist() == []
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(50, (1000,), generator=g)
    last = {}
    for pos, i in enumerate(idx.tolist()):
        last[i] = pos
    assert last_occurrences(idx).tolist() == [last[i] for i in sorted(last)]


STORAGE = sorted(n for n, c in datasampler.REGISTRY if issubclass(c, StorageSampler))


@pytest.mark.parametrize("name", STORAGE)
def test_a_repeated_index_keeps_the_embedding_of_its_last_occurrence(name):
    labels = labels_of()
    sampler = datasampler.REGISTRY.get(name)(labels=labels, bs=8, samples_per_class=2, seed=0, bigbs=32)
    emb = torch.randn(len(labels), 3)
    sampler.init_storage(lambda: emb)
    idx = torch.tensor([3, 5, 3, 7, 3, 5])
    sampler.update_storage(torch.arange(6.0)[:, None].expand(6, 3), idx)
    assert sampler.storage[3].tolist() == [4.0] * 3 and sampler.storage[5].tolist() == [5.0] * 3
    assert sampler.storage[7].tolist() == [3.0] * 3 and torch.equal(sampler.storage[4], emb[4])
    with pytest.raises(ValueError, match="indices"):
        sampler.update_storage(torch.zeros(2, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(IndexError):
        sampler.update_storage(torch.zeros(1, 3), torch.tensor([len(labels)]))


@pytest.mark.parametrize("name", ["d2_coreset", "greedy_coreset"])
def test_identical_samplers_fed_repeated_indices_draw_identical_batches(name):
    """Many repeats in large updates (on two threads, where an unordered write could race):
    the memory equals a sequential write, and two identical samplers stay in lockstep."""
    labels = torch.arange(100).repeat_interleave(4)
    emb = torch.randn(len(labels), 64)
    build = datasampler.REGISTRY.get(name)
    a, b = (build(labels=labels, bs=16, samples_per_class=2, seed=1, bigbs=96) for _ in range(2))
    a.init_storage(lambda: emb)
    b.init_storage(lambda: emb)
    reference = emb.clone()
    g = torch.Generator().manual_seed(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(3):
            idx = torch.randint(len(labels), (20_000,), generator=g)
            upd = torch.randn(len(idx), 64, generator=g)
            a.update_storage(upd, idx)
            b.update_storage(upd.clone(), idx.tolist())
            last = {}
            for pos, i in enumerate(idx.tolist()):
                last[i] = pos
            rows = torch.tensor(sorted(last))
            reference[rows] = upd[torch.tensor([last[i] for i in rows.tolist()])]
            assert torch.equal(a.storage, reference) and torch.equal(b.storage, reference)
            assert list(a) == list(b)
    finally:
        torch.set_num_threads(threads)
