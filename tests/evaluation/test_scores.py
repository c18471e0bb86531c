"""Distribution scores of the ranking pass (--retrieval_score mls / expected_cosine), the Bessel
ratio behind expected_cosine, and the evaluation plumbing of the distribution parameters (embed
with_params, evaluate_split's confidence and .npz, check_options)."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.special
import torch

import evaluation
import metrics
from evaluation.options import add_evaluation_args
from metrics import ranking, scores
from utilities.errors import ConfigError

RANKED = ["e_recall@1", "e_recall@2", "mAP@R", "r_precision", "mAP"]


def split(n=30, dim=4, n_classes=6, seed=0):
    """~``n`` points in ``n_classes`` loose clusters (every class ≥ 2 members), and per-point
    log-parameters spread over two orders of magnitude, so a distribution score ranks differently
    from the means."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    mu = torch.randn(n_classes, dim, generator=g)[labels] + 0.9 * torch.randn(n, dim, generator=g)
    log_var = 2.5 * torch.randn(n, dim, generator=g)
    log_kappa = math.log(3.0) + 2.0 * torch.randn(n, 1, generator=g)
    return mu, labels, log_var, log_kappa


def brute_ranks(dist: np.ndarray, labels, query, gallery) -> list[list[int]]:
    """Per query, the sorted 1-based ranks of its relevant gallery items, the gallery ordered by
    (distance, index) with the query itself left out: a loop over the definition."""
    out = []
    for q in query:
        cand = [g for g in gallery if g != q]
        order = sorted(cand, key=lambda g: (dist[q, g], g))
        out.append([r for r, g in enumerate(order, start=1) if labels[g] == labels[q]])
    return out


def metrics_from_ranks(ranks: list[list[int]]) -> dict[str, float]:
    """e_recall@1, e_recall@2 (queries without a relevant item count as misses), mAP@R,
    r_precision and mAP (means over queries with R ≥ 1), from their definitions."""
    with_rel = [r for r in ranks if r]
    ap_r = [sum(h / rank for h, rank in enumerate(r, start=1) if rank <= len(r)) / len(r) for r in with_rel]
    return {
        "e_recall@1": sum(bool(r) and r[0] <= 1 for r in ranks) / len(ranks),
        "e_recall@2": sum(bool(r) and r[0] <= 2 for r in ranks) / len(ranks),
        "mAP@R": sum(ap_r) / len(with_rel),
        "r_precision": sum(sum(rank <= len(r) for rank in r) / len(r) for r in with_rel) / len(with_rel),
        "mAP": sum(sum(h / rank for h, rank in enumerate(r, start=1)) / len(r) for r in with_rel)
        / len(with_rel),
    }


def neg_mls(mu, log_var) -> np.ndarray:
    """−MLS(i, j) of PFE for every pair, by a float64 loop over pairs."""
    mu, var = mu.double().numpy(), log_var.double().exp().numpy()
    n, dim = mu.shape
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            s = var[i] + var[j]
            out[i, j] = 0.5 * np.sum((mu[i] - mu[j]) ** 2 / s + np.log(s)) + 0.5 * dim * math.log(2 * math.pi)
    return out


def ratio_scipy(kappa: np.ndarray, dim: int) -> np.ndarray:
    """A_dim(κ) from scipy's exponentially scaled Bessel functions (float64; NaN where both underflow)."""
    with np.errstate(invalid="ignore"):
        return scipy.special.ive(dim / 2, kappa) / scipy.special.ive(dim / 2 - 1, kappa)


def neg_expected_cosine(mu, log_kappa) -> np.ndarray:
    """−E[cos(z_i, z_j)] = −A(κ_i) A(κ_j) μ_i·μ_j for every pair, by a float64 loop."""
    mu = torch.nn.functional.normalize(mu.double(), dim=1).numpy()
    a = ratio_scipy(np.exp(log_kappa.double().numpy()[:, 0]), mu.shape[1])
    n = len(mu)
    return np.array([[-a[i] * a[j] * float(mu[i] @ mu[j]) for j in range(n)] for i in range(n)])


def close(got: dict, want: dict) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# -- the Bessel ratio ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [3, 4, 128, 512, 1024])
def test_bessel_ratio_matches_scipy_and_its_small_kappa_limit(dim):
    kappa = np.logspace(-2, 4, 61)
    got = scores.bessel_ratio(torch.from_numpy(kappa), dim).numpy()
    ref = ratio_scipy(kappa, dim)
    usable = np.isfinite(ref) & (scipy.special.ive(dim / 2, kappa) > 1e-290)  # no underflow in scipy
    assert usable.sum() >= 15
    np.testing.assert_allclose(got[usable], ref[usable], rtol=1e-12)
    # where scipy underflows (κ ≪ D): A_D(κ) = κ/D · (1 − κ²/(D(D+2)) + O(κ⁴/D⁴))
    tiny = np.array([1e-4, 1e-3, 1e-2])
    series = tiny / dim * (1 - tiny**2 / (dim * (dim + 2)))
    np.testing.assert_allclose(scores.bessel_ratio(torch.from_numpy(tiny), dim).numpy(), series, rtol=1e-8)
    assert 0 < got.min() and got.max() < 1 and np.all(np.diff(got) > 0)  # increasing in κ


def test_bessel_ratio_at_the_edges():
    mpmath = pytest.importorskip("mpmath")  # arbitrary precision (installed with torch's sympy)
    kappa = [1e5, 1e7, 1e9]  # the largest two beyond MAX_CF_STEPS: Amos' bound starts the fraction
    a = scores.bessel_ratio(torch.tensor([0.0, *kappa], dtype=torch.float64), 512)
    assert a[0] == 0
    with mpmath.workdps(25):
        ref = [float(mpmath.besseli(256, k) / mpmath.besseli(255, k)) for k in kappa]
    np.testing.assert_allclose(a[1:].numpy(), ref, rtol=1e-13)


# -- the scores on the ranking pass -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_mls_metrics_equal_a_brute_force_loop_over_pairs(backend):
    mu, y, log_var, _ = split()
    want = metrics_from_ranks(brute_ranks(neg_mls(mu, log_var), y.tolist(), range(30), range(30)))
    got = metrics.compute(
        RANKED, mu, y, params=log_var, distribution="gaussian", score="mls", backend=backend
    )
    close(got, want)
    # the test can fail: the means alone rank differently on this split
    assert metrics.compute(RANKED, mu, y, backend=backend) != got
    # query/gallery protocol: the last third queries the rest
    q = torch.arange(30) >= 20
    want = metrics_from_ranks(brute_ranks(neg_mls(mu, log_var), y.tolist(), range(20, 30), range(20)))
    kw = {"query_mask": q, "gallery_mask": ~q, "params": log_var, "distribution": "gaussian"}
    close(metrics.compute(RANKED, mu, y, score="mls", backend=backend, **kw), want)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_expected_cosine_ranks_equal_brute_force_expected_cosine(backend):
    mu, y, _, log_kappa = split(seed=3)
    mu = torch.nn.functional.normalize(mu, dim=1)  # a vMF model's means are unit vectors
    want = brute_ranks(neg_expected_cosine(mu, log_kappa), y.tolist(), range(30), range(30))
    got = ranking.relevant_ranks(
        mu,
        y,
        torch.arange(30),
        torch.arange(30),
        5,
        backend=backend,
        score="expected_cosine",
        params=log_kappa,
    )
    for row, ranks in zip(got.tolist(), want, strict=True):
        assert row[: len(ranks)] == ranks and all(v == ranking.PAD for v in row[len(ranks) :])
    kw = {"params": log_kappa, "distribution": "vmf", "backend": backend}
    close(metrics.compute(RANKED, mu, y, score="expected_cosine", **kw), metrics_from_ranks(want))
    assert metrics.compute(RANKED, mu, y, **kw) != metrics.compute(
        RANKED, mu, y, score="expected_cosine", **kw
    )


@pytest.mark.parametrize("score", ["mls", "expected_cosine"])
def test_torch_and_numba_rank_the_same_for_every_chunk_and_tile(score, monkeypatch):
    g = torch.Generator().manual_seed(7)
    n, dim = 200, 16
    y = torch.randint(0, 25, (n,), generator=g)
    mu = torch.nn.functional.normalize(
        torch.randn(25, dim, generator=g)[y] + torch.randn(n, dim, generator=g), dim=1
    )
    params = torch.randn(n, dim if score == "mls" else 1, generator=g) * 2
    idx = torch.arange(n)
    query, gallery = idx[idx % 3 != 0], idx[idx % 2 == 0]  # overlapping: self-exclusion matters
    ref = ranking.relevant_ranks(mu, y, query, gallery, 30, backend="torch", score=score, params=params)
    assert (ref[:, 0] < ranking.PAD).all()
    for mode in (1, 2):  # the kernel's dense and sparse passes
        got = ranking.relevant_ranks(
            mu, y, query, gallery, 30, backend="numba", numba_mode=mode, score=score, params=params
        )
        assert torch.equal(got, ref)
    monkeypatch.setattr(ranking, "MLS_TILE", 37 * dim)  # mls: tiles that cut rows and columns unevenly
    for chunk in (1, 13):
        for backend in ("numba", "torch"):
            got = ranking.relevant_ranks(
                mu, y, query, gallery, 30, backend=backend, chunk=chunk, score=score, params=params
            )
            assert torch.equal(got, ref)


def test_mean_score_reproduces_the_existing_numbers_exactly():
    mu, y, log_var, log_kappa = split(n=60, dim=8, seed=5)
    names = [*RANKED, "c_recall@1", "mAP_c", "nmi", "rho_spectrum@1"]
    plain = metrics.compute(names, mu, y, seed=2)
    assert (
        metrics.compute(names, mu, y, seed=2, params=log_var, distribution="gaussian", score="mean") == plain
    )
    assert metrics.compute(names, mu, y, seed=2, params=log_kappa, distribution="vmf") == plain
    want = metrics_from_ranks(
        brute_ranks(torch.cdist(mu.double(), mu.double()).numpy(), y.tolist(), range(60), range(60))
    )
    close(plain, want)
    # a distribution score changes the retrieval metrics only: clustering and spectrum keep the means
    mls = metrics.compute(names, mu, y, seed=2, params=log_var, distribution="gaussian", score="mls")
    assert mls["nmi"] == plain["nmi"] and mls["rho_spectrum@1"] == plain["rho_spectrum@1"]
    assert mls["c_recall@1"] == mls["e_recall@1"] and mls["mAP_c"] != plain["mAP_c"]


# -- refused combinations -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"score": "mls", "distribution": "vmf"}, "embeddings are vmf"),
        ({"score": "expected_cosine", "distribution": "gaussian"}, "embeddings are gaussian"),
        ({"score": "mls", "distribution": "dirac"}, "embeddings are dirac"),
        ({"score": "mls", "distribution": "gaussian", "params": None}, "none were given"),
        ({"score": "mls", "distribution": "gaussian", "backend": "faiss"}, "exact ranking pass"),
        ({"score": "cosine", "distribution": "gaussian"}, "unknown retrieval score 'cosine'"),
        ({"score": "mean", "distribution": "cauchy"}, "unknown embedding distribution"),
        ({"score": "mls", "distribution": "gaussian", "params": torch.zeros(30, 3)}, r"shape \(30, 4\)"),
        ({"score": "mean", "distribution": "vmf", "params": torch.zeros(30, 4)}, r"shape \(30, 1\)"),
        ({"distribution": "gaussian", "params": torch.full((30, 4), math.nan)}, "NaN"),
    ],
)
def test_refused_combinations_are_one_line_config_errors(kwargs, match):
    mu, y, log_var, _ = split()
    kwargs = {"params": log_var, **kwargs}
    with pytest.raises(ConfigError, match=match) as err:
        metrics.compute(["e_recall@1"], mu, y, **kwargs)
    assert "\n" not in str(err.value)


def test_check_options_refuses_a_score_that_does_not_fit_the_run():
    def opt(score, distribution, backend="auto"):
        return SimpleNamespace(
            eval_backend=backend,
            eval_index="flat",
            storage_metrics=["e_recall@1"],
            evaluation_metrics=["e_recall@1"],
            retrieval_score=score,
            embedding_distribution=distribution,
        )

    cpu = torch.device("cpu")
    for score, distribution in [
        ("mean", "dirac"),
        ("mean", "vmf"),
        ("mls", "gaussian"),
        ("expected_cosine", "vmf"),
    ]:
        evaluation.check_options(opt(score, distribution), cpu)
    with pytest.raises(ConfigError, match="--retrieval_score mls ranks by the parameters of gaussian"):
        evaluation.check_options(opt("mls", "vmf"), cpu)
    with pytest.raises(ConfigError, match="faiss searches the means only"):
        evaluation.check_options(opt("expected_cosine", "vmf", "faiss"), cpu)
    parser = argparse.ArgumentParser()
    add_evaluation_args(parser.add_argument_group())
    assert parser.parse_args([]).retrieval_score == "mean"
    assert (
        evaluation.options.search_options(parser.parse_args(["--retrieval_score", "mls"]))["score"] == "mls"
    )


# -- embed and evaluate_split -------------------------------------------------------------------------
class Items(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.labels = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i]), i


class Gaussian(torch.nn.Module):
    """Items are [μ | log σ²]; ``infer`` splits them (forward packs them, as a probabilistic net does)."""

    def forward(self, x):
        return x

    def infer(self, x):
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:]


def loader(x, y, shuffle=False):
    return torch.utils.data.DataLoader(Items(x, y), batch_size=7, shuffle=shuffle)


def test_embed_with_params_returns_them_in_dataset_order():
    mu, y, log_var, _ = split()
    packed = torch.cat([mu, log_var], 1)
    emb, labels, params = evaluation.embed(
        Gaussian(), loader(packed, y, shuffle=True), torch.device("cpu"), with_params=True
    )
    assert torch.equal(emb, mu) and torch.equal(labels, y) and torch.equal(params, log_var)
    emb2, labels2 = evaluation.embed(Gaussian(), loader(packed, y, shuffle=True), torch.device("cpu"))
    assert torch.equal(emb2, mu) and torch.equal(labels2, y)  # the means, not the packed output
    # a module without infer is a dirac embedding; its output's norm stands in for the parameter
    emb, _, params = evaluation.embed(
        torch.nn.Identity(), loader(mu, y, shuffle=True), torch.device("cpu"), with_params=True
    )
    assert torch.equal(emb, mu) and torch.allclose(params[:, 0], mu.norm(dim=1))


def test_evaluate_split_ranks_by_the_score_and_saves_params_and_confidence(tmp_path):
    mu, y, log_var, _ = split()
    packed = torch.cat([mu, log_var], 1)
    names = ["e_recall@1", "mAP@R"]
    got = evaluation.evaluate_split(
        Gaussian(), loader(packed, y), names, torch.device("cpu"), save_to=tmp_path / "e.npz",
        distribution="gaussian", score="mls", backend="torch",
    )  # fmt: skip
    want = metrics.compute(names, mu, y, params=log_var, distribution="gaussian", score="mls")
    assert {k: got[k] for k in names} == want
    with np.load(tmp_path / "e.npz") as saved:
        np.testing.assert_array_equal(saved["embeddings"], mu.numpy())
        np.testing.assert_array_equal(saved["params"], log_var.numpy())
        np.testing.assert_allclose(saved["confidence"], -log_var.mean(1).numpy(), rtol=1e-6)
        assert str(saved["distribution"]) == "gaussian"
    with pytest.raises(ConfigError, match="embeddings are gaussian"):
        evaluation.evaluate_split(
            Gaussian(),
            loader(packed, y),
            names,
            torch.device("cpu"),
            distribution="gaussian",
            score="expected_cosine",
        )


def test_confidence_of_each_distribution():
    params = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    assert torch.equal(scores.confidence(params, "gaussian"), torch.tensor([1.0, -1.0]))
    assert torch.equal(scores.confidence(params[:, :1], "vmf"), torch.tensor([1.0, 2.0]))
    assert torch.equal(scores.confidence(params[:, :1], "dirac"), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="unknown embedding distribution"):
        scores.confidence(params, "cauchy")
    with pytest.raises(ValueError, match=r"vmf parameters are \(N, 1\)"):
        scores.confidence(params, "vmf")


def test_python_m_evaluation_reads_the_saved_distribution(tmp_path):
    """A file main.py wrote carries params, confidence and the distribution: ``python -m
    evaluation --retrieval_score mls`` ranks by the brute-force MLS, and the uncertainty metrics
    use the saved confidence."""
    from evaluation.__main__ import main as evaluate_file

    mu, y, log_var, _ = split()
    confidence = -log_var.mean(1)
    file = tmp_path / "e.npz"
    np.savez(file, embeddings=mu.numpy(), labels=y.numpy(), params=log_var.numpy(),
             confidence=confidence.numpy(), distribution=np.str_("gaussian"))  # fmt: skip
    got = evaluate_file(["--embeddings", str(file), "--retrieval_score", "mls", "--evaluation_metrics",
                         "e_recall@1", "mAP@R", "erc_recall@1"])  # fmt: skip
    want = metrics_from_ranks(brute_ranks(neg_mls(mu, log_var), y.tolist(), range(30), range(30)))
    close({k: got[k] for k in ("e_recall@1", "mAP@R")}, {k: want[k] for k in ("e_recall@1", "mAP@R")})
    direct = metrics.compute(["erc_recall@1"], mu, y, confidence=confidence, params=log_var,
                             distribution="gaussian", score="mls")  # fmt: skip
    assert got["erc_recall@1"] == direct["erc_recall@1"]
