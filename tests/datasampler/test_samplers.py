"""Batch samplers: batch size, classes per batch, samples per class, coverage, determinism, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import datasampler
import parameters
from datasampler.storage import StorageSampler
from utilities.errors import ConfigError

NAMES = datasampler.REGISTRY.names()
STORAGE = {"greedy_coreset", "d2_coreset", "disthist_batchmatch", "fid_batchmatch"}


def imbalanced_labels(n_classes: int = 20, seed: int = 0) -> torch.Tensor:
    """Class sizes 1..12 (some smaller than K), shuffled so classes are not contiguous."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 13, (n_classes,), generator=g)
    labels = torch.repeat_interleave(torch.arange(n_classes) * 3 + 1, sizes)  # non-contiguous ids
    return labels[torch.randperm(len(labels), generator=g)]


def build(name: str, labels: torch.Tensor, **hp) -> datasampler.BatchSampler:
    cls = datasampler.REGISTRY.get(name)
    if not issubclass(cls, StorageSampler):
        hp.pop("bigbs", None)
    sampler = cls(labels=labels, **hp)
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(len(labels), 8, generator=g), dim=1)
    sampler.init_storage(lambda: emb)  # a no-op for the samplers without a memory
    return sampler


def test_the_full_set_is_registered_with_the_reference_flags():
    assert set(NAMES) == {"class_random", "full_random", "greedy_coreset", "d2_coreset",
                          "disthist_batchmatch", "fid_batchmatch", "pk"}  # fmt: skip
    opt = parameters.parse(["--dataset", "digits"])
    assert opt.data_batchmatch_bigbs == 512 and opt.data_batchmatch_ncomps == 10
    assert opt.data_storage_no_update is False and opt.data_d2_coreset_lambda == 1.0
    assert opt.data_sampler_lowproj_dim == -1 and opt.data_gc_softened is False
    opt = parameters.parse(["--dataset", "digits", "--data_sampler", "fid_batchmatch", "--bs", "8",
                            "--data_batchmatch_bigbs", "16", "--data_batchmatch_ncomps", "3", "--seed", "4"])  # fmt: skip
    sampler = datasampler.select(opt.data_sampler, opt, imbalanced_labels())
    assert sampler.bigbs == 16 and sampler.ncomps == 3 and sampler.seed == 4 and sampler.bs == 8


@pytest.mark.parametrize("name", NAMES)
def test_bs_must_be_a_multiple_of_samples_per_class(name):
    with pytest.raises(ConfigError, match="multiple of --samples_per_class"):
        datasampler.REGISTRY.get(name)(labels=imbalanced_labels(), bs=10, samples_per_class=4, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_too_few_images_is_a_config_error(name):
    with pytest.raises(ConfigError, match="fewer than --bs"):
        datasampler.REGISTRY.get(name)(labels=torch.tensor([0, 0, 1, 1]), bs=8, samples_per_class=2, seed=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spc", [2, 4])
def test_batches_have_the_documented_shape_and_length(name, spc):
    labels = imbalanced_labels()
    sampler = build(name, labels, bs=16, samples_per_class=spc, seed=0, bigbs=48)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    if name != "pk":
        assert len(sampler) == len(labels) // 16
    for b in batches:
        assert len(b) == 16 and all(0 <= i < len(labels) for i in b)
        if name == "full_random":
            lab = labels[b]
            assert len(set(b[:-1])) == 15
            assert (lab[:-1] == lab[-1]).any()  # the extra image has a partner in the batch
            continue
        blocks = labels[b].view(16 // spc, spc)
        assert (blocks == blocks[:, :1]).all()  # K images of one class per block
        for block, idx in zip(blocks, torch.tensor(b).view(16 // spc, spc), strict=True):
            n_c = int((labels == block[0]).sum())
            if n_c >= spc:  # distinct images whenever the class has enough
                assert len(set(idx.tolist())) == spc


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_the_seed_and_resumable(name):
    labels = imbalanced_labels()
    hp = {"bs": 16, "samples_per_class": 2, "bigbs": 48}
    a, b = build(name, labels, seed=3, **hp), build(name, labels, seed=3, **hp)
    assert list(a) == list(b)
    state = a.state_dict()
    nxt = list(a)
    c = build(name, labels, seed=99, **hp)
    assert list(c) != nxt
    c.load_state_dict(state)
    c.init_storage(lambda: 1 / 0)  # restored (or no memory at all): no re-embedding
    assert list(c) == nxt


def test_class_random_draws_classes_uniformly_with_replacement():
    labels = imbalanced_labels()
    sampler = build("class_random", labels, bs=16, samples_per_class=2, seed=0)
    counts: Counter = Counter()
    repeats = 0
    for _ in range(100):
        for b in sampler:
            classes = labels[b][::2].tolist()
            counts.update(classes)
            repeats += len(classes) != len(set(classes))
    freq = np.array(list(counts.values())) / sum(counts.values())
    sigma = np.sqrt(0.05 * 0.95 / sum(counts.values()))
    assert len(counts) == 20 and np.abs(freq - 1 / 20).max() < 4 * sigma
    assert repeats > 0  # with replacement, as in the study


def test_class_random_small_classes_repeat_images():
    labels = torch.tensor([0] * 1 + [1] * 5)
    batches = list(build("class_random", labels, bs=6, samples_per_class=3, seed=0))
    assert all(len(b) == 6 for b in batches)
    for b in batches:  # two blocks of three images of one class; the singleton class repeats image 0
        for block in (b[:3], b[3:]):
            assert len(set(labels[block].tolist())) == 1
            assert len(set(block)) == (1 if labels[block[0]] == 0 else 3)


def test_full_random_is_uniform_over_images_and_covers_without_repeats():
    labels = torch.tensor([0] * 40 + [1] * 4 + [2] * 4)  # class-uniform sampling would favour 1, 2
    sampler = build("full_random", labels, bs=8, samples_per_class=2, seed=0)
    counts = Counter()
    for _ in range(400):
        batches = list(sampler)
        firsts = [i for b in batches for i in b[:-1]]
        assert len(firsts) == len(set(firsts))  # no image twice per epoch in the random part
        counts.update(firsts)
    freq = np.array([counts[i] for i in range(48)]) / sum(counts.values())
    assert np.abs(freq - 1 / 48).max() < 0.004


def test_pk_covers_every_image_with_distinct_classes():
    labels = imbalanced_labels(n_classes=25, seed=2)
    for spc in (2, 3, 4):
        sampler = build("pk", labels, bs=5 * spc, samples_per_class=spc, seed=1)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen = set()
        for b in batches:
            blocks = labels[b].view(5, spc)
            assert len(set(blocks[:, 0].tolist())) == 5  # P distinct classes
            assert (blocks == blocks[:, :1]).all()
            seen |= set(b)
        assert seen == set(range(len(labels)))
        n_groups = sum(-(-int((labels == c).sum()) // spc) for c in labels.unique())
        assert len(sampler) == -(-n_groups // 5)


def test_pk_with_one_dominant_class_still_covers_and_keeps_classes_distinct():
    labels = torch.tensor([0] * 60 + [1, 1, 2, 2, 3, 3, 4, 4])
    sampler = build("pk", labels, bs=8, samples_per_class=2, seed=0)
    batches = list(sampler)
    assert len(batches) == 30  # the big class needs 30 groups, one per batch
    assert set().union(*map(set, batches)) == set(range(len(labels)))
    for b in batches:
        assert len(set(labels[b][::2].tolist())) == 4


def test_pk_needs_enough_classes():
    with pytest.raises(ConfigError, match="distinct classes"):
        build("pk", torch.arange(4).repeat_interleave(10), bs=10, samples_per_class=2, seed=0)


# ---- storage samplers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STORAGE))
def test_storage_must_be_initialised_and_is_updated(name):
    labels = imbalanced_labels()
    sampler = datasampler.REGISTRY.get(name)(labels=labels, bs=8, samples_per_class=2, seed=0, bigbs=32)
    assert isinstance(sampler, StorageSampler)
    with pytest.raises(RuntimeError, match="init_storage"):
        next(iter(sampler))
    emb = torch.randn(len(labels), 6)
    sampler.init_storage(lambda: emb)
    sampler.update_storage(torch.ones(2, 6, requires_grad=True), torch.tensor([3, 5]))
    assert (sampler.storage[[3, 5]] == 1).all() and torch.equal(sampler.storage[4], emb[4])
    frozen = datasampler.REGISTRY.get(name)(
        labels=labels, bs=8, samples_per_class=2, seed=0, bigbs=32, no_update=True
    )
    frozen.init_storage(lambda: emb)
    frozen.update_storage(torch.ones(2, 6), [3, 5])
    assert torch.equal(frozen.storage, emb)
    with pytest.raises(ValueError, match="embeddings"):
        datasampler.REGISTRY.get(name)(labels=labels, bs=8, samples_per_class=2, seed=0).init_storage(
            lambda: torch.zeros(3, 6)
        )
    with pytest.raises(ConfigError, match="bigbs"):
        datasampler.REGISTRY.get(name)(labels=labels, bs=16, samples_per_class=2, seed=0, bigbs=8)


def test_low_projection_changes_the_compared_dimension():
    labels = imbalanced_labels()
    sampler = build("greedy_coreset", labels, bs=8, samples_per_class=2, seed=0, lowproj_dim=3)
    assert sampler.features(torch.arange(5)).shape == (5, 3)
    assert len(next(iter(sampler))) == 8
    assert sampler.projection.shape == (8, 3)
    assert torch.allclose(sampler.features(torch.arange(5)), sampler.storage[:5] @ sampler.projection)
    blocks = labels[next(iter(sampler))].view(4, 2)
    assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == 4  # P×K, distinct


def brute_force_k_center(
    x: np.ndarray, classes: np.ndarray, first: int, n: int, softened_ok=None
) -> list[int]:
    picks = [first]
    for _ in range(n - 1):
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in picks or classes[i] in classes[picks]:
                continue
            d = min(float(((x[i] - x[s]) ** 2).sum()) for s in picks)
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
    return picks


def test_greedy_coreset_is_k_center_greedy_on_the_right_indices():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40)[torch.randperm(40, generator=g)]  # one image per class, shuffled ids
    emb = torch.randn(40, 5, generator=g)
    sampler = datasampler.REGISTRY.get("greedy_coreset")(
        labels=labels, bs=8, samples_per_class=1, seed=0, bigbs=40
    )
    sampler.init_storage(lambda: emb)
    for b in list(sampler)[:3]:
        expected = brute_force_k_center(emb.numpy(), labels.numpy(), b[0], 8)
        assert b == expected


def test_greedy_coreset_picks_each_class_once_and_completes_it():
    labels = torch.arange(10).repeat_interleave(6)
    emb = torch.randn(60, 4)
    sampler = datasampler.REGISTRY.get("greedy_coreset")(
        labels=labels, bs=12, samples_per_class=3, seed=0, bigbs=60
    )
    sampler.init_storage(lambda: emb)
    for b in sampler:
        blocks = labels[b].view(4, 3)
        assert len(set(blocks[:, 0].tolist())) == 4 and (blocks == blocks[:, :1]).all()


def test_greedy_coreset_softened_picks_from_the_top_percentiles():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200)
    emb = torch.randn(200, 3, generator=g)
    sampler = datasampler.REGISTRY.get("greedy_coreset")(labels=labels, bs=4, samples_per_class=1, seed=0,
                                                         bigbs=200, softened=True)  # fmt: skip
    sampler.init_storage(lambda: emb)
    x = emb.double()
    hit_argmax = 0
    for b in list(sampler)[:10]:
        for t in range(1, 4):
            cov = torch.cdist(x, x[b[:t]]).pow(2).min(1).values
            cov[b[:t]] = -1
            allowed = cov >= torch.quantile(cov[cov >= 0], 0.97) - 1e-9
            assert allowed[b[t]]
            hit_argmax += b[t] == int(cov.argmax())
    assert hit_argmax < 30  # softened: not always the farthest point


def test_d2_coreset_prefers_far_points():
    # two tight clusters far apart: after a first pick, D² sampling jumps to the other cluster
    g = torch.Generator().manual_seed(0)
    emb = torch.cat([torch.randn(30, 4, generator=g) * 0.05, torch.randn(30, 4, generator=g) * 0.05 + 3])
    labels = torch.arange(60)
    sampler = datasampler.REGISTRY.get("d2_coreset")(
        labels=labels, bs=2, samples_per_class=1, seed=0, bigbs=60
    )
    sampler.init_storage(lambda: emb)
    jumps = sum((b[0] < 30) != (b[1] < 30) for _ in range(3) for b in sampler)
    assert jumps >= 0.9 * 3 * len(sampler)


def test_disthist_picks_the_candidate_with_the_lowest_cost(monkeypatch):
    from scipy.stats import wasserstein_distance

    from datasampler import disthist_batchmatch as dh

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(30).repeat_interleave(2)
    emb = torch.randn(60, 4, generator=g)
    sampler = datasampler.REGISTRY.get("disthist_batchmatch")(labels=labels, bs=8, samples_per_class=2, seed=0,
                                                              bigbs=40, ncomps=6)  # fmt: skip
    sampler.init_storage(lambda: emb)
    big, cand = sampler.candidates()

    def cost_np(idx: np.ndarray, big_idx: np.ndarray) -> float:
        xb, xc = emb.double().numpy()[big_idx], emb.double().numpy()[idx]

        def pd(z: np.ndarray) -> np.ndarray:  # brute-force pairwise distances (the oracle)
            return np.array(
                [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
            )

        db, dc = pd(xb), pd(xc)
        edges = np.linspace(db.min(), db.max(), dh.N_BINS + 1)
        hb = np.histogram(db, edges)[0] / len(db)
        hc = np.histogram(np.clip(dc, edges[0], edges[-1]), edges)[0] / len(dc)
        centres = (edges[:-1] + edges[1:]) / 2
        w1 = wasserstein_distance(centres, centres, hb, hc)
        return (np.linalg.norm(xb.mean(0) - xc.mean(0)) + np.linalg.norm(xb.std(0, ddof=1) - xc.std(0, ddof=1))
                + dh.W1_WEIGHT * w1)  # fmt: skip

    big_idx = big.reshape(-1).numpy()
    costs = [cost_np(c.reshape(-1).numpy(), big_idx) for c in cand]
    ours = sampler.cost(emb[big.reshape(-1)], emb[cand.reshape(len(cand), -1)])
    assert np.allclose(ours.numpy(), costs, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(sampler, "candidates", lambda: (big, cand))
    assert torch.equal(sampler.next_batch(), cand[int(np.argmin(costs))])


def test_frechet_distance_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    from datasampler.fid_batchmatch import frechet_distance

    g = torch.Generator().manual_seed(0)
    xb = torch.randn(50, 4, generator=g, dtype=torch.float64)
    xc = torch.randn(3, 40, 4, generator=g, dtype=torch.float64) * 1.5 + 0.3
    ours = frechet_distance(xb, xc)
    for k in range(3):
        s1, s2 = np.cov(xb.numpy(), rowvar=False), np.cov(xc[k].numpy(), rowvar=False)
        mu = xb.numpy().mean(0) - xc[k].numpy().mean(0)
        ref = mu @ mu + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm(s1 @ s2).real)
        assert ours[k].item() == pytest.approx(ref, rel=1e-6)
    # singular covariances (fewer samples than dimensions): finite, and 0 for identical sets
    few = torch.randn(6, 16, generator=g, dtype=torch.float64)
    d = frechet_distance(few, torch.stack([few, few[[1, 0, 2, 3, 4, 5]], few * 2]))
    assert torch.isfinite(d).all() and abs(d[0]) < 1e-6 and abs(d[1]) < 1e-6 and d[2] > 0.1


def test_fid_batchmatch_prefers_candidates_like_the_big_batch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40).repeat_interleave(2)
    emb = torch.randn(80, 4, generator=g)
    emb[:20] *= 10  # a candidate made of these outliers must lose
    sampler = datasampler.REGISTRY.get("fid_batchmatch")(
        labels=labels, bs=8, samples_per_class=2, seed=0, bigbs=80
    )
    sampler.init_storage(lambda: emb)
    big = torch.arange(80).view(40, 2)
    cand = torch.stack([big[:4], big[20:24], big[5:9]])  # only the 2nd avoids the outliers
    monkeypatch.setattr(sampler, "candidates", lambda: (big, cand))
    assert torch.equal(sampler.next_batch(), cand[1])
