"""The toy experiment: the study's qualitative claim (the ρ-regularised embedding of the training
data has the flatter singular-value spectrum) with a fixed seed, and its building blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from toy_experiments import toy_example_diagonal_lines as toy


def test_data_layout():
    x_tr, y_tr, x_te, y_te = toy.make_data(1)
    assert x_tr.shape == (60, 2) and x_te.shape == (60, 2)
    assert torch.equal(torch.bincount(y_tr), torch.full((4,), 15))
    assert torch.allclose(x_tr[:, 0], x_tr[:, 1])  # on the diagonal
    assert torch.all(x_te[y_te < 2, 0] == 0.2) and torch.all(x_te[y_te >= 2, 1] == 0.2)


def test_all_triplets_matches_brute_force():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    a, p, n = toy.all_triplets(labels)
    expected = {
        (i, j, k) for i, j, k in itertools.product(range(6), repeat=3)
        if i != j and labels[i] == labels[j] and labels[k] != labels[i]
    }  # fmt: skip
    assert set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected and len(a) == len(expected)


def test_rho_flip():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    a, p, n = toy.all_triplets(labels)
    gen = torch.Generator().manual_seed(0)
    p0, n0 = toy.rho_flip(a, p, n, labels, 0.0, gen)
    assert torch.equal(p0, p) and torch.equal(n0, n)
    p1, n1 = toy.rho_flip(a, p, n, labels, 1.0, gen)
    assert torch.equal(p1, a)  # the positive becomes the anchor ...
    assert torch.all(labels[n1] == labels[a]) and torch.all(n1 != a)  # ... the negative a true positive


def test_regularised_spectrum_is_flatter():
    result = toy.run(seed=1)
    base, reg = result["base"]["spectrum"], result["regularised"]["spectrum"]
    assert base.sum() == pytest.approx(1.0) and reg.sum() == pytest.approx(1.0)
    assert reg[1] > base[1] + 0.02, (base, reg)  # 0.114 -> 0.161 at seed 1


def test_script_writes_its_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "run", lambda seed, p: _fake_result())
    toy.main(["--out", str(tmp_path)])
    assert (tmp_path / "diag_line_toy_ex_save.png").stat().st_size > 0
    assert (tmp_path / "diag_line_toy_ex_save.pdf").stat().st_size > 0


def _fake_result() -> dict:
    x_tr, y_tr, x_te, y_te = toy.make_data(1)
    emb = torch.nn.functional.normalize(x_tr, dim=1)
    model = {
        "train": emb,
        "test": torch.nn.functional.normalize(x_te, dim=1),
        "spectrum": np.array([0.9, 0.1]),
    }
    return {"data": (x_tr, y_tr, x_te, y_te), "base": model, "regularised": model}
