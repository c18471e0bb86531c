"""The Gaussian probabilistic losses (hib, pfe, dul_cls, dul_reg, spe) against brute-force loops.

Every reference below is written from the paper's formula with Python loops over pairs, samples,
classes and dimensions, in float64. The Monte-Carlo losses draw ε with one
``torch.randn((K, B, D))`` from a generator seeded with the loss's seed (criteria/_common.py,
``sample_gaussian``), so a reference that draws from a generator of the same seed sees exactly
the same noise. Besides value and gradients: the deterministic (σ² → 0) limits, finiteness at
log σ² = ±30, seeding and the generator stream across a state_dict round trip.
"""

from __future__ import annotations

import math

import pytest
import torch

import criteria
from criteria.arcface import ArcFaceLoss
from criteria.dul_cls import DULClsLoss
from criteria.dul_reg import DULRegLoss
from criteria.hib import HIBLoss
from criteria.pfe import PFELoss, mutual_likelihood_score
from criteria.spe import SPELoss
from tests.criteria.helpers import assert_same_loss_and_grads

F64 = torch.float64
D = 4
SEED = 7
# 7 images, 3 classes; class 2 has a single image (a support, never a query, for SPE)
LABELS = torch.tensor([0, 1, 0, 1, 0, 2, 1])
NAMES = ["dul_cls", "dul_reg", "hib", "pfe", "spe"]


def packed_batch(log_var_range: tuple[float, float] = (-1.0, 1.0), seed: int = 0, dtype=F64) -> torch.Tensor:
    """(7, 2D) ``[μ | log σ²]``: unit-scale μ, log σ² uniform in the range; a leaf requiring grad."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(len(LABELS), D, generator=g, dtype=dtype) * 0.6
    lo, hi = log_var_range
    log_var = lo + (hi - lo) * torch.rand(len(LABELS), D, generator=g, dtype=dtype)
    return torch.cat([mean, log_var], dim=1).requires_grad_()


def noise(n_samples: int, n: int = len(LABELS), seed: int = SEED, dtype=F64) -> torch.Tensor:
    """The ε a loss with ``seed`` draws first: (K, B, D)."""
    return torch.randn((n_samples, n, D), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def kl_loop(mean, log_var) -> torch.Tensor:
    """mean_i KL(N(μ_i, σ_i²) ‖ N(0, I)), one dimension at a time."""
    total = 0.0
    for i in range(len(mean)):
        for d in range(mean.shape[1]):
            var = torch.exp(log_var[i, d])
            total = total + 0.5 * (var + mean[i, d] ** 2 - 1.0 - log_var[i, d])
    return total / len(mean)


def build(name: str, seed: int = SEED, **hyper):
    """Loss ``name`` from plain keyword arguments (context: D, seed, 3 classes); the same class
    weights in every call."""
    torch.manual_seed(0)
    context = {"embed_dim": D, "seed": seed, "n_classes": 3, "lr": 1e-3}
    cls = criteria.REGISTRY.get(name)
    return cls(**{k: context[k] for k in criteria.REGISTRY.context(name)}, **hyper).to(F64)


# ---- HIB ----------------------------------------------------------------------------------------


def hib_reference(x, labels, a, b, n_samples, beta):
    mean, log_var = x[:, :D], x[:, D:]
    z = mean + noise(n_samples) * torch.exp(0.5 * log_var)
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i == j:
                continue
            # the K × K sample pairs (k, l) of images i and j: ‖z_i^k − z_j^l‖
            distances = (z[:, None, i] - z[None, :, j]).pow(2).sum(-1).sqrt()
            p = torch.sigmoid(-a * distances + b).mean()
            if labels[i] == labels[j]:
                pos.append(-torch.log(p))
            else:
                neg.append(-torch.log(1.0 - p))
    return 0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg)) + beta * kl_loop(mean, log_var)


def test_hib_matches_the_paper_formula():
    x = packed_batch()
    loss = HIBLoss(embed_dim=D, seed=SEED, n_samples=3, kl_weight=0.05, init_scale=0.8, init_bias=1.5).to(F64)
    assert_same_loss_and_grads(
        lambda: loss(x, LABELS),
        lambda: hib_reference(x, LABELS, loss.scale, loss.bias, 3, 0.05),
        [x, loss.scale, loss.bias],
    )


def test_hib_dirac_limit_is_the_deterministic_match_probability():
    """σ² → 0: every sample is μ, so p_ij = σ(−a‖μ_i − μ_j‖ + b) whatever the noise."""
    x = packed_batch((-30.0, -30.0))
    loss = HIBLoss(embed_dim=D, seed=SEED, n_samples=4, init_scale=2.0, init_bias=1.0).to(F64)
    log_p, log_not_p = loss.match_log_probs(x[:, :D], x[:, D:])
    p = torch.sigmoid(-2.0 * torch.cdist(x[:, :D], x[:, :D]) + 1.0).detach()
    off = ~torch.eye(len(LABELS), dtype=torch.bool)
    # the samples still move by σ ≈ 3e-7
    torch.testing.assert_close(log_p.exp()[off], p[off], rtol=1e-5, atol=0)
    torch.testing.assert_close(log_not_p.exp()[off], 1.0 - p[off], rtol=1e-5, atol=0)


def test_hib_balances_positive_and_negative_pairs():
    """The two pair sets are averaged separately: duplicating every negative pair's images does
    not change the negative term (checked through the dirac limit, where no noise enters)."""
    loss = HIBLoss(embed_dim=D, seed=SEED, n_samples=1, kl_weight=0.0, init_scale=1.0, init_bias=0.5).to(F64)
    x = packed_batch((-30.0, -30.0)).detach()
    mean = x[:, :D]
    d = torch.cdist(mean, mean)
    same = LABELS[:, None] == LABELS[None, :]
    off = ~torch.eye(len(LABELS), dtype=torch.bool)
    logits = -d + 0.5
    expected = 0.5 * (
        -torch.nn.functional.logsigmoid(logits[same & off]).mean()
        - torch.nn.functional.logsigmoid(-logits[~same]).mean()
    )
    torch.testing.assert_close(loss(x, LABELS), expected, rtol=1e-6, atol=0)


# ---- PFE ----------------------------------------------------------------------------------------


def pfe_reference(x, labels):
    mean, log_var = x[:, :D].detach(), x[:, D:]
    scores = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] != labels[j]:
                continue
            s = -0.5 * D * math.log(2 * math.pi)
            for d in range(D):
                var = torch.exp(log_var[i, d]) + torch.exp(log_var[j, d])
                s = s - 0.5 * ((mean[i, d] - mean[j, d]) ** 2 / var + torch.log(var))
            scores.append(s)
    return -sum(scores) / len(scores)


def test_pfe_matches_the_paper_formula_and_freezes_the_mean():
    x = packed_batch()
    loss = PFELoss(embed_dim=D)
    assert_same_loss_and_grads(lambda: loss(x, LABELS), lambda: pfe_reference(x, LABELS), [x])
    loss(x, LABELS).backward()
    assert torch.equal(x.grad[:, :D], torch.zeros(len(LABELS), D)), "μ receives no gradient"
    assert x.grad[:, D:].abs().sum() > 0
    assert PFELoss.frozen_mean and criteria.distribution("pfe") == "gaussian"


def test_pfe_mls_with_tiny_equal_variances_is_affine_in_the_squared_distance():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(50, D, generator=g, dtype=F64), torch.randn(50, D, generator=g, dtype=F64)
    log_var = torch.full((50, D), -12.0, dtype=F64)
    var = math.exp(-12.0)
    mls = mutual_likelihood_score(a, log_var, b, log_var)
    d2 = (a - b).pow(2).sum(1)
    expected = -d2 / (4 * var) - 0.5 * D * math.log(4 * math.pi * var)
    torch.testing.assert_close(mls, expected, rtol=1e-12, atol=0)


def test_pfe_without_genuine_pair_is_a_differentiable_zero():
    x = packed_batch()
    value = PFELoss(embed_dim=D)(x, torch.arange(len(LABELS)))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---- DUL-cls and DUL-reg ------------------------------------------------------------------------


def arcface_loop(emb, labels, weights, scale, margin):
    """mean_i CE(s·cos θ_ic with cos(θ_iy + m) at the target) from per-class dot products."""
    total = 0.0
    for i in range(len(labels)):
        logits = []
        for c in range(len(weights)):
            cos = torch.dot(emb[i], weights[c]) / (torch.linalg.norm(emb[i]) * torch.linalg.norm(weights[c]))
            if c == labels[i]:
                theta = torch.arccos(cos)
                beyond = theta + margin > math.pi  # the continuation past π
                cos = cos - margin * math.sin(margin) if beyond else torch.cos(theta + margin)
            logits.append(scale * cos)
        logits = torch.stack(logits)
        total = total - (logits[labels[i]] - torch.logsumexp(logits, 0))
    return total / len(labels)


def test_dul_cls_matches_the_paper_formula():
    x = packed_batch()
    loss = DULClsLoss(n_classes=3, embed_dim=D, seed=SEED, kl_weight=0.3, feature_scale=4.0).to(F64)
    weights = loss.class_weights

    def reference():
        mean, log_var = x[:, :D], x[:, D:]
        sample = mean + noise(1)[0] * torch.exp(0.5 * log_var)
        return arcface_loop(sample, LABELS, weights, 4.0, 0.5) + 0.3 * kl_loop(mean, log_var)

    assert_same_loss_and_grads(lambda: loss(x, LABELS), reference, [x, weights])


def test_dul_cls_dirac_limit_is_arcface_on_the_mean():
    x = packed_batch((-30.0, -30.0))
    dul = DULClsLoss(n_classes=3, embed_dim=D, seed=SEED, kl_weight=0.0).to(F64)
    arcface = ArcFaceLoss(n_classes=3, embed_dim=D).to(F64)
    arcface.load_state_dict({"class_weights": dul.class_weights.detach().clone()})
    assert_same_loss_and_grads(
        lambda: dul(x, LABELS), lambda: arcface(x[:, :D], LABELS), [x], rtol=1e-5, atol=1e-5
    )


def test_dul_reg_matches_the_paper_formula():
    x = packed_batch()
    loss = DULRegLoss(n_classes=3, embed_dim=D, cls_weight=0.4, feature_scale=4.0).to(F64)
    weights = loss.class_weights

    def reference():
        mean, log_var = x[:, :D], x[:, D:]
        nll = 0.0
        for i in range(len(LABELS)):
            centre = weights[LABELS[i]].detach() / torch.linalg.norm(weights[LABELS[i]].detach())
            for d in range(D):
                nll = nll + 0.5 * ((centre[d] - mean[i, d]) ** 2 / torch.exp(log_var[i, d]) + log_var[i, d])
        return nll / len(LABELS) + 0.4 * arcface_loop(mean, LABELS, weights, 4.0, 0.5)

    assert_same_loss_and_grads(lambda: loss(x, LABELS), reference, [x, weights])


def test_dul_reg_regression_never_moves_the_centres():
    x = packed_batch()
    loss = DULRegLoss(n_classes=3, embed_dim=D, cls_weight=0.0).to(F64)
    loss(x, LABELS).backward()
    assert torch.equal(loss.class_weights.grad, torch.zeros(3, D)) and x.grad.abs().sum() > 0


# ---- SPE ----------------------------------------------------------------------------------------


def spe_reference(x, labels, log_spread, n_samples, eps=None):
    """Leave-one-out SPE: each image with another of its class is a query; prototypes per dimension."""
    mean, log_var = x[:, :D], x[:, D:]
    eps = noise(n_samples) if eps is None else eps
    spread = torch.exp(log_spread)
    classes = sorted(set(labels.tolist()))
    terms = []
    for i in range(len(labels)):
        if sum(int(labels[j] == labels[i]) for j in range(len(labels)) if j != i) == 0:
            continue
        protos = []  # (mean, variance) per class and dimension
        for c in classes:
            support = [j for j in range(len(labels)) if labels[j] == c and j != i]
            m, v = [], []
            for d in range(D):
                precisions = [1.0 / (torch.exp(log_var[j, d]) + spread) for j in support]
                weight = sum(precisions)
                m.append(sum(p * mean[j, d] for p, j in zip(precisions, support, strict=True)) / weight)
                v.append(1.0 / weight + spread)
            protos.append((m, v))
        p = 0.0
        for k in range(n_samples):
            log_liks = []
            for m, v in protos:
                ll = 0.0
                for d in range(D):
                    z = mean[i, d] + eps[k, i, d] * torch.exp(0.5 * log_var[i, d])
                    ll = ll - 0.5 * ((z - m[d]) ** 2 / v[d] + torch.log(v[d]) + math.log(2 * math.pi))
                log_liks.append(ll)
            log_liks = torch.stack(log_liks)
            p = p + torch.softmax(log_liks, 0)[classes.index(int(labels[i]))]
        terms.append(-torch.log(p / n_samples))
    return sum(terms) / len(terms)


def test_spe_matches_the_paper_formula():
    x = packed_batch()
    loss = SPELoss(embed_dim=D, seed=SEED, n_samples=3, init_log_spread=-1.0).to(F64)
    assert_same_loss_and_grads(
        lambda: loss(x, LABELS + 5),  # any class ids: SPE has no class table
        lambda: spe_reference(x, LABELS, loss.log_spread, 3),
        [x, loss.log_spread],
    )


def test_spe_dirac_limit_is_a_leave_one_out_prototypical_loss():
    """σ_i² → 0: prototype = class mean (without the query), variance σ_ε²(1 + 1/n_c), z = μ."""
    x = packed_batch((-30.0, -30.0))
    loss = SPELoss(embed_dim=D, seed=SEED, n_samples=2, init_log_spread=-1.0).to(F64)
    mean, spread = x[:, :D].detach(), math.exp(-1.0)
    terms = []
    for i in range(len(LABELS)):
        same = (LABELS == LABELS[i]) & (torch.arange(len(LABELS)) != i)
        if not same.any():
            continue
        logits, target = [], None
        for c in sorted(set(LABELS.tolist())):
            support = (LABELS == c) & (torch.arange(len(LABELS)) != i)
            var = spread * (1 + 1 / int(support.sum()))
            d2 = (mean[i] - mean[support].mean(0)).pow(2).sum()
            logits.append(-0.5 * d2 / var - 0.5 * D * math.log(var))
            target = len(logits) - 1 if c == LABELS[i] else target
        terms.append(-torch.log_softmax(torch.stack(logits), 0)[target])
    torch.testing.assert_close(loss(x, LABELS), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def test_spe_without_query_is_a_differentiable_zero():
    x = packed_batch()
    value = build("spe")(x, torch.arange(len(LABELS)))  # every class a singleton: supports only
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---- all five -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("log_var", [-30.0, 30.0])
@pytest.mark.parametrize("name", NAMES)
def test_finite_at_extreme_variances(name, log_var, dtype):
    x = packed_batch((log_var, log_var), dtype=dtype)
    loss = build(name).to(dtype)
    value = loss(x, LABELS)
    grads = torch.autograd.grad(value, [x, *loss.parameters()], allow_unused=True)
    assert torch.isfinite(value) and value.dtype == dtype
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert grads[0][:, D:].abs().sum() > 0, "the log-variances receive a gradient"


MONTE_CARLO = ["dul_cls", "hib", "spe"]


@pytest.mark.parametrize("name", MONTE_CARLO)
def test_monte_carlo_losses_are_seeded(name):
    x = packed_batch()
    first, again = build(name)(x, LABELS), build(name)(x, LABELS)
    assert torch.equal(first, again)
    assert not torch.equal(first, build(name, seed=SEED + 1)(x, LABELS))  # same class weights


@pytest.mark.parametrize("name", MONTE_CARLO)
def test_state_dict_round_trip_keeps_the_generator_stream(name):
    x = packed_batch()
    loss = build(name)
    first = loss(x, LABELS)
    state = loss.state_dict()
    restored = build(name)
    restored.load_state_dict(state)
    following = loss(x, LABELS)
    assert torch.equal(restored(x, LABELS), following)
    assert not torch.equal(following, first), "the stream moved on"


@pytest.mark.parametrize("name", NAMES)
def test_declares_a_gaussian_whole_batch_loss_and_checks_the_packing(name):
    cls = criteria.REGISTRY.get(name)
    assert criteria.distribution(name) == "gaussian"
    assert (cls.requires_miner, cls.supports_xbm, cls.tuple_kinds) == (False, False, ())
    assert getattr(cls, "frozen_mean", False) == (name == "pfe")
    with pytest.raises(ValueError, match=r"packed as \(B, 8\) \[mean \| log-variance\]; got \(7, 4\)"):
        build(name)(packed_batch()[:, :D], LABELS)
