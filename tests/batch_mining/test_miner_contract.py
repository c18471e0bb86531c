"""Every registered miner: flags, tuple kind and shapes, validity, determinism, resume, edge cases."""

from __future__ import annotations

import argparse

import pytest
import torch

import batch_mining
import criteria
import parameters
from tests.batch_mining.helpers import assert_valid_triplets, build
from tests.conftest import make_batch
from utilities.errors import ConfigError

NAMES = batch_mining.REGISTRY.names()
KINDS = {"triplets", "pairs", "npair", "lifted"}
# miners whose triplets are meant to break the label rules (controls and the ρ-flip)
NOT_LABEL_VALID = {"intra_random", "random_distance", "rho_distance"}
STOCHASTIC = {
    "random", "semihard", "softhard", "distance", "rho_distance", "random_distance", "intra_random",
    "npair", "parametric",
}  # fmt: skip


def test_the_full_set_is_registered():
    assert set(NAMES) == {
        "random", "semihard", "softhard", "distance", "rho_distance", "random_distance", "intra_random",
        "npair", "lifted", "parametric", "batchhard", "multisimilarity",
    }  # fmt: skip


def test_reference_flags_and_defaults():
    opt = parameters.parse(["--dataset", "digits"])
    assert opt.miner_distance_lower_cutoff == 0.5 and opt.miner_distance_upper_cutoff == 1.4
    assert opt.miner_rho_distance_lower_cutoff == 0.5 and opt.miner_rho_distance_cp == 0.2
    assert opt.miner_semihard_margin == 0.2 and opt.miner_multisimilarity_epsilon == 0.1
    assert opt.miner_parametric_mode == "uniform" and opt.miner_parametric_support_lim == [0.0, 2.0]
    opt = parameters.parse(["--dataset", "digits", "--miner_rho_distance_cp", "0.35", "--seed", "7",
                            "--miner_semihard_margin", "0.05"])  # fmt: skip
    rho = batch_mining.select("rho_distance", opt)
    assert rho.cp == 0.35 and rho.seed == 7
    assert batch_mining.select("semihard", opt).margin == 0.05


def test_unknown_miner_is_a_config_error():
    with pytest.raises(ConfigError, match="distance"):
        batch_mining.select("hardest", parameters.parse(["--dataset", "digits"]))


def check_kind(miner, out, labels):
    b = len(labels)
    assert miner.tuple_kind in KINDS
    if miner.tuple_kind == "triplets":
        assert len(out) == 3 and all(t.dtype == torch.long and t.dim() == 1 for t in out)
        assert len({len(t) for t in out}) == 1
    elif miner.tuple_kind == "pairs":
        a1, p, a2, n = out
        assert len(a1) == len(p) and len(a2) == len(n)
        assert (labels[a1] == labels[p]).all() and (a1 != p).all() and (labels[a2] != labels[n]).all()
    elif miner.tuple_kind == "npair":
        a, p, neg = out
        assert a.shape == p.shape and neg.shape == (len(a), b) and neg.dtype == torch.bool
    else:
        a, pos, neg = out
        assert pos.shape == neg.shape == (len(a), b) and pos.dtype == neg.dtype == torch.bool


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("per_class", [2, 4])
def test_output_kind_and_label_validity(name, per_class):
    x, y = make_batch(n_classes=32 // per_class, per_class=per_class, dim=16)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    x, y = x[perm], y[perm]  # classes not contiguous
    miner = build(name, seed=0)
    out = miner(x, y)
    check_kind(miner, out, y)
    if miner.tuple_kind == "triplets":
        assert len(out[0]) > 0
        if name not in NOT_LABEL_VALID:
            assert_valid_triplets(y, *out)
        assert all(((t >= 0) & (t < len(y))).all() for t in out)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_and_resumable(name):
    x, y = make_batch(n_classes=8, per_class=4, dim=16)
    a, b = build(name, seed=3), build(name, seed=3)
    for _ in range(2):
        for s, t in zip(a(x, y), b(x, y), strict=True):
            assert torch.equal(s, t)
    state = a.state_dict()
    first = a(x, y)
    a.load_state_dict(state)
    for s, t in zip(first, a(x, y), strict=True):
        assert torch.equal(s, t)
    if name in STOCHASTIC:
        c = build(name, seed=4)
        outs = [c(x, y) for _ in range(3)]
        assert any(not torch.equal(s, t) for o in outs for s, t in zip(o, first, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_does_not_touch_the_global_rng_or_grad(name):
    x, y = make_batch(n_classes=8, per_class=4, dim=16)
    x.requires_grad_(True)
    state = torch.get_rng_state()
    out = build(name, seed=0)(x, y)
    assert torch.equal(state, torch.get_rng_state())
    assert all(not t.requires_grad for t in out)


def empty_of_kind(miner, out, b):
    check_kind(miner, out, torch.zeros(b, dtype=torch.long))
    return all(len(t) == 0 for t in out)


@pytest.mark.parametrize("name", NAMES)
def test_nothing_to_mine_gives_empty_tensors_of_the_right_kind(name):
    x, _ = make_batch(n_classes=6, per_class=1, dim=8)
    singletons = torch.arange(6)
    miner = build(name, seed=0)
    out = miner(x, singletons)
    if name == "intra_random":  # draws a = p = n inside a singleton class by design
        assert all(torch.equal(out[0], t) for t in out)
    else:
        assert empty_of_kind(miner, out, 6), name
    # empty batch
    out = miner(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    assert all(t.shape[0] == 0 for t in out)


@pytest.mark.parametrize("name", NAMES)
def test_single_class_batch(name):
    x, _ = make_batch(n_classes=1, per_class=6, dim=8)
    y = torch.zeros(6, dtype=torch.long)
    miner = build(name, seed=0)
    out = miner(x, y)
    if name == "intra_random":
        assert len(out[0]) == 6
    elif name == "rho_distance":  # only ρ-flips can be built: (a, a, other sample of a's class)
        a, p, n = out
        assert torch.equal(a, p) and (a != n).all()
    elif name == "random_distance":  # permuted labels are still one class
        assert all(len(t) == 0 for t in out)
    else:
        assert empty_of_kind(miner, out, 6), name


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"intra_random", "random_distance"}))
def test_an_anchor_without_positive_is_never_an_anchor(name):
    x, _ = make_batch(n_classes=4, per_class=3, dim=8)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 5])  # samples 9, 10, 11 are alone
    miner = build(name, seed=0)
    out = miner(x, y)
    anchors = torch.cat([out[0], out[2]]) if miner.tuple_kind == "pairs" else out[0]
    assert len(anchors) > 0 and (anchors < 9).all()


@pytest.mark.parametrize("name", NAMES)
def test_labels_on_another_device_type_are_accepted(name):
    x, y = make_batch(n_classes=4, per_class=2, dim=8)
    out = build(name, seed=0)(x.double(), y.int())
    assert all(t.device == x.device for t in out)


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_are_rejected(name):
    with pytest.raises(ValueError, match="expects batch"):
        build(name, seed=0)(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_cuda_with_cuda_outputs(name):
    x, y = make_batch(n_classes=8, per_class=4, dim=16)
    miner = build(name, seed=0)
    out = miner(x.cuda(), y.cuda())
    assert all(t.is_cuda for t in out)
    check_kind(miner, tuple(t.cpu() for t in out), y)


# ---- compatibility with the criteria ---------------------------------------------------------------


def _losses_needing_a_miner() -> list[str]:
    return [n for n in criteria.REGISTRY.names() if criteria.requires_miner(n)]


def test_triplet_loss_with_npair_miner_is_a_start_up_error():
    opt = parameters.parse(["--dataset", "digits", "--loss", "triplet", "--batch_mining", "npair"])
    miner = batch_mining.select(opt.batch_mining, opt)
    with pytest.raises(ConfigError, match="npair"):
        criteria.select(opt.loss, opt, n_classes=10, batchminer=miner)


@pytest.mark.parametrize("loss", _losses_needing_a_miner())
def test_every_loss_accepts_exactly_the_miners_of_its_kind(loss):
    opt = parameters.parse(["--dataset", "digits"])
    kinds = criteria.REGISTRY.get(loss).tuple_kinds  # the kinds the loss accepts
    for name in NAMES:
        miner = batch_mining.select(name, opt)
        if miner.tuple_kind in kinds:
            criteria.select(loss, opt, n_classes=10, batchminer=miner)
        else:
            with pytest.raises(ConfigError):
                criteria.select(loss, opt, n_classes=10, batchminer=miner)


def generator_states(miner: batch_mining.BatchMiner) -> dict[str, torch.Tensor]:
    """The miner's generator states as they appear in its ``state_dict()`` (its extra state)."""
    return miner.state_dict()["_extra_state"]


def test_a_state_for_an_absent_device_loads_and_survives_a_round_trip():
    x, y = make_batch(n_classes=8, per_class=4, dim=16)
    a = build("distance", seed=0)
    a(x, y)
    state = {**generator_states(a), "cuda:7": torch.zeros(3, dtype=torch.uint8)}  # e.g. a GPU checkpoint
    b = build("distance", seed=5)
    b.load_state_dict({"_extra_state": state})
    assert torch.equal(generator_states(b)["cuda:7"], state["cuda:7"])
    for s, t in zip(a(x, y), b(x, y), strict=True):
        assert torch.equal(s, t)


# ---- the plugin contract: nn.Module, context, flags, state in the holder's state dict -------------

# the miner flags and their defaults as the reference study's commands know them
MINER_FLAG_DEFAULTS = {
    "miner_distance_lower_cutoff": 0.5,
    "miner_distance_upper_cutoff": 1.4,
    "miner_multisimilarity_epsilon": 0.1,
    "miner_npair_one_per_class": False,
    "miner_parametric_mode": "uniform",
    "miner_parametric_n_support": 30,
    "miner_parametric_support_lim": [0.0, 2.0],
    "miner_rho_distance_cp": 0.2,
    "miner_rho_distance_lower_cutoff": 0.5,
    "miner_rho_distance_upper_cutoff": 1.4,
    "miner_semihard_margin": 0.2,
}


def test_registry_flags_have_the_reference_names_and_defaults():
    parser = argparse.ArgumentParser()
    batch_mining.REGISTRY.add_args(parser)
    defaults = vars(parser.parse_args([]))
    assert defaults == MINER_FLAG_DEFAULTS
    opt = parser.parse_args(
        ["--miner_parametric_mode", "hards", "--miner_parametric_support_lim", "0.5", "1.5"]
    )
    assert opt.miner_parametric_mode == "hards" and opt.miner_parametric_support_lim == [0.5, 1.5]
    with pytest.raises(SystemExit):
        parser.parse_args(["--miner_parametric_mode", "nonsense"])


@pytest.mark.parametrize("name", NAMES)
def test_seed_is_required_context_and_hyperparameters_are_attributes(name):
    assert batch_mining.REGISTRY.context(name) == ["seed"]
    with pytest.raises(TypeError):
        batch_mining.REGISTRY.get(name)()
    miner = build(name, seed=3)
    assert isinstance(miner, torch.nn.Module) and miner.seed == 3 and not hasattr(miner, "hp")
    for hp in batch_mining.REGISTRY.hyperparameters(name):
        assert getattr(miner, hp.param) == hp.default
        assert f"{hp.param}=" in repr(miner)


def test_select_builds_from_the_namespace_with_the_seed_as_context():
    opt = argparse.Namespace(seed=11, **MINER_FLAG_DEFAULTS)
    opt.miner_distance_lower_cutoff = 0.3  # shared by distance and random_distance
    miner = batch_mining.select("random_distance", opt)
    assert miner.seed == 11 and miner.lower_cutoff == 0.3 and miner.upper_cutoff == 1.4
    assert batch_mining.select("distance", opt).lower_cutoff == 0.3
    assert batch_mining.select("rho_distance", opt).lower_cutoff == 0.5


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_generator_states_travel_in_the_holders_state_dict(name, tmp_path):
    """A criterion holds its miner as a submodule; a checkpoint of the criterion resumes mining."""
    x, y = make_batch(n_classes=8, per_class=4, dim=16)

    class Holder(torch.nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.batchminer = build(name, seed=seed)

    a = Holder(seed=3)
    a.batchminer(x, y)
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    expected = [a.batchminer(x, y) for _ in range(2)]
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(state) == {"batchminer._extra_state"} and "cpu" in state["batchminer._extra_state"]
    b = Holder(seed=99)
    b.load_state_dict(state)
    assert [m for m in b.modules() if isinstance(m, batch_mining.BatchMiner)] == [b.batchminer]
    for want in expected:
        for s, t in zip(want, b.batchminer(x, y), strict=True):
            assert torch.equal(s, t)
    with pytest.raises(RuntimeError, match="_extra_state"):  # a checkpoint without them is an error
        Holder(seed=0).load_state_dict({})


def test_stats_are_popped_once():
    x, y = make_batch(n_classes=8, per_class=4, dim=16)
    miner = build("semihard", seed=0)
    miner(x, y)
    miner(x, y)
    found = miner.pop_stats()["semihard_found"]
    assert 0 < found <= 2 * len(y) and isinstance(found, float)
    assert miner.pop_stats() == {}
