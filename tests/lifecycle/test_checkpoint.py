"""Atomic checkpoint writes, weights_only loading, RNG round trips, stored-flag merging."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from utilities import checkpoint
from utilities.cli import explicit_flags, stored_namespace
from utilities.seeding import rng_state, set_rng_state


def test_crash_during_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    checkpoint.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.write(b"garbage")  # part of the new file is on disk ...
        raise KeyboardInterrupt  # ... when the process dies

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()

    state = checkpoint.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary file left


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)  # noqa: NPY002
    checkpoint.save_atomic({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2), random.gauss(0, 1), np.random.randn())  # noqa: NPY002
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    torch.manual_seed(99)
    set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2), random.gauss(0, 1), np.random.randn())  # noqa: NPY002
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert got[3:] == expected[3:]


def test_plain_makes_numpy_values_weights_only_safe(tmp_path):
    history = {"testing": [{"a": np.float64(0.5), "spectrum": np.arange(3.0)}, None]}
    checkpoint.save_atomic({"h": checkpoint.plain(history)}, tmp_path / "c.pt")
    loaded = checkpoint.load(tmp_path / "c.pt")["h"]
    assert loaded["testing"][0]["a"] == 0.5 and loaded["testing"][1] is None
    assert torch.equal(loaded["testing"][0]["spectrum"], torch.arange(3.0, dtype=torch.float64))


def test_explicit_flags_sees_only_what_was_typed():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--n_epochs", type=int, default=150)
    parser.add_argument("--no_progress", action="store_true")
    assert explicit_flags(parser, ["--n_epochs", "3", "--no_progress"]) == {
        "n_epochs": 3,
        "no_progress": True,
    }
    assert parser.parse_args([]).lr == 1e-5  # defaults restored


def test_stored_namespace_precedence():
    defaults = argparse.Namespace(lr=1.0, seed=1, new_flag="d", resume="")
    merged = stored_namespace(
        defaults,
        {"lr": 2.0, "seed": 7, "resume": "old"},
        {"seed": 9},
        {"resume", "evaluate_only", "checkpoint"},
    )
    # a flag added after the run was stored falls back to its default; --resume is never restored
    assert vars(merged) == {"lr": 2.0, "seed": 9, "new_flag": "d", "resume": ""}


def test_a_checkpoint_from_before_the_miner_moved_into_the_loss_is_upgraded():
    """Old checkpoints kept the miner's generator states under ``miner``; they now belong to the
    criterion's state dict (one level deeper inside the cross-batch memory wrapper)."""
    import parameters

    gen = torch.Generator().manual_seed(3).get_state()
    for xbm, key in ((0, "batchminer._extra_state"), (64, "criterion.batchminer._extra_state")):
        old = {"miner": {"cpu": gen}, "criterion": {"beta": torch.ones(2)}, "args": {"xbm_size": xbm}}
        new = parameters._upgrade(old)
        assert "miner" not in new and torch.equal(new["criterion"][key]["cpu"], gen)
        assert torch.equal(new["criterion"]["beta"], torch.ones(2))
    untouched = {"criterion": {"batchminer._extra_state": {}}, "args": {}}
    assert parameters._upgrade(dict(untouched)) == untouched
