"""Proxy and class-weight losses: proxynca, proxyanchor, softmax, softtriplet.

Brute force: loops over samples and classes (or centres) from the papers' formulas, float64, loss
and gradients w.r.t. the embeddings *and* the learnable parameters. pytorch-metric-learning (PML):
* proxyanchor = PML ProxyAnchorLoss(margin, alpha) with the same proxies;
* softmax     = PML NormalizedSoftmaxLoss(temperature) with W = our weightsᵀ;
* softtriplet : its classification term = PML SoftTripleLoss(centers_per_class, la, gamma, margin)
  (PML has no centre regulariser by default, so τ = 0 there; R is checked by the loop);
* proxynca    : PML ProxyNCALoss keeps the positive proxy in the softmax denominator (the paper
  excludes it); with softmax_scale = σ² PML's per-sample loss ℓ' satisfies ℓ = log(e^ℓ' − 1).
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses, reducers

from criteria.proxyanchor import ProxyAnchorLoss
from criteria.proxynca import ProxyNCALoss
from criteria.softmax import SoftmaxLoss
from criteria.softtriplet import SoftTripleLoss
from tests.criteria.helpers import assert_same_loss_and_grads, random_batch, value_and_grads

C, D = 5, 8


def _batch(seed):
    x, labels = random_batch(n_classes=4, per_class=3, dim=D, seed=seed, normalize=False)
    return x, labels  # classes 0..3 present, class 4 absent from the batch


def _unit(v):
    return v / v.norm()


def _ce(logits, y):
    return torch.logsumexp(torch.stack(logits), 0) - logits[y]


# ---- proxynca -----------------------------------------------------------------------------------
def _proxynca_ref(x, labels, proxies, scale):
    terms = []
    for i in range(len(x)):
        d = [(scale * _unit(x[i]) - scale * _unit(proxies[c])).pow(2).sum() for c in range(len(proxies))]
        y = int(labels[i])
        neg = [-d[c] for c in range(len(proxies)) if c != y]
        terms.append(d[y] + torch.logsumexp(torch.stack(neg), 0))
    return torch.stack(terms).mean()


def test_proxynca_matches_loop_and_pml():
    x, labels = _batch(31)
    loss = ProxyNCALoss(n_classes=C, embed_dim=D, lr=1e-5, scale=3.0).double()
    params = [x, loss.proxies]
    assert_same_loss_and_grads(
        lambda: loss(x, labels), lambda: _proxynca_ref(x, labels, loss.proxies, 3.0), params
    )
    pml = losses.ProxyNCALoss(
        num_classes=C, embedding_size=D, softmax_scale=9.0, reducer=reducers.DoNothingReducer()
    )
    pml.proxies = loss.proxies
    assert_same_loss_and_grads(
        lambda: loss(x, labels),
        lambda: torch.log(torch.expm1(pml(x, labels)["loss"]["losses"])).mean(),
        params,
        rtol=1e-6,
    )


def test_proxynca_one_class_and_lr():
    x, _ = _batch(32)
    loss = ProxyNCALoss(n_classes=1, embed_dim=D, lr=2e-5, lrmulti=50).double()
    value = loss(x, torch.zeros(len(x), dtype=torch.long))  # no negative proxy: only the pull term
    assert torch.isfinite(value) and value.item() > 0
    (group,) = loss.param_groups()
    assert group["lr"] == pytest.approx(1e-3) and group["params"][0] is loss.proxies


# ---- proxyanchor --------------------------------------------------------------------------------
def _proxyanchor_ref(x, labels, proxies, alpha, delta):
    s = [[_unit(x[i]) @ _unit(proxies[c]) for c in range(len(proxies))] for i in range(len(x))]
    present = sorted(set(labels.tolist()))
    pos = sum(
        torch.log(1 + sum(torch.exp(-alpha * (s[i][c] - delta)) for i in range(len(x)) if labels[i] == c))
        for c in present
    ) / len(present)
    neg = sum(
        torch.log(1 + sum(torch.exp(alpha * (s[i][c] + delta)) for i in range(len(x)) if labels[i] != c))
        for c in range(len(proxies))
    ) / len(proxies)
    return pos + neg


def test_proxyanchor_matches_loop_and_pml():
    x, labels = _batch(33)
    loss = ProxyAnchorLoss(n_classes=C, embed_dim=D, lr=1e-5, alpha=32.0, margin=0.1).double()
    params = [x, loss.proxies]
    assert_same_loss_and_grads(
        lambda: loss(x, labels), lambda: _proxyanchor_ref(x, labels, loss.proxies, 32.0, 0.1), params
    )
    pml = losses.ProxyAnchorLoss(num_classes=C, embedding_size=D, margin=0.1, alpha=32)
    pml.proxies = loss.proxies
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: pml(x, labels), params)


# ---- softmax ------------------------------------------------------------------------------------
def _transposed_pml_check(ours, pml, x, labels, weight_name="class_weights"):
    """Compare with a PML loss whose W is our weight matrix transposed (D, C)."""
    weights = getattr(ours, weight_name)
    pml.W = torch.nn.Parameter(weights.detach().T.clone())
    v1, (gx1, gw1) = value_and_grads(lambda: ours(x, labels), [x, weights])
    v2, (gx2, gw2) = value_and_grads(lambda: pml(x, labels), [x, pml.W])
    torch.testing.assert_close(v1, v2, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gx1, gx2, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gw1, gw2.T, rtol=1e-7, atol=1e-9)
    assert gw1.abs().sum() > 0


def test_softmax_matches_loop_and_pml():
    x, labels = _batch(34)
    loss = SoftmaxLoss(n_classes=C, embed_dim=D, temperature=0.05).double()
    w = loss.class_weights

    def reference():
        return torch.stack(
            [_ce([_unit(x[i]) @ _unit(w[c]) / 0.05 for c in range(C)], int(labels[i])) for i in range(len(x))]
        ).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, w])
    _transposed_pml_check(
        loss, losses.NormalizedSoftmaxLoss(num_classes=C, embedding_size=D, temperature=0.05), x, labels
    )


# ---- softtriplet --------------------------------------------------------------------------------
def _softtriple_ref(x, labels, centroids, C, K, la, gamma, delta, tau):
    w = {(c, k): _unit(centroids[k * C + c]) for c in range(C) for k in range(K)}  # row k·C + c
    terms = []
    for i in range(len(x)):
        xi = _unit(x[i])
        logits = []
        for c in range(C):
            s = torch.stack([xi @ w[c, k] for k in range(K)])
            p = torch.softmax(s / gamma, 0)  # softmax over the class's K centres, multiplier 1/γ
            logits.append(la * ((p * s).sum() - (delta if c == labels[i] else 0.0)))
        terms.append(_ce(logits, int(labels[i])))
    loss = torch.stack(terms).mean()
    if K > 1:
        reg = sum(
            torch.sqrt(2 + 1e-5 - 2 * w[c, k] @ w[c, j])
            for c in range(C)
            for k in range(K)
            for j in range(k + 1, K)
        ) / (C * K * (K - 1))
        loss = loss + tau * reg
    return loss


@pytest.mark.parametrize("K", [1, 3])
def test_softtriplet_matches_loop(K):
    x, labels = _batch(35)
    loss = SoftTripleLoss(
        n_classes=C, embed_dim=D, lr=1e-5, n_centroids=K, la=8.0, gamma=0.1, margin_delta=0.01, reg_weight=0.2
    ).double()
    ref = lambda: _softtriple_ref(x, labels, loss.centroids, C, K, 8.0, 0.1, 0.01, 0.2)  # noqa: E731
    assert_same_loss_and_grads(lambda: loss(x, labels), ref, [x, loss.centroids])


def test_softtriplet_classification_term_matches_pml():
    x, labels = _batch(36)
    K = 4
    loss = SoftTripleLoss(
        n_classes=C,
        embed_dim=D,
        lr=1e-5,
        n_centroids=K,
        la=20.0,
        gamma=0.1,
        margin_delta=0.01,
        reg_weight=0.0,
    ).double()
    pml = losses.SoftTripleLoss(
        num_classes=C, embedding_size=D, centers_per_class=K, la=20, gamma=0.1, margin=0.01
    )
    # PML's centre column c·K + k is our row k·C + c
    to_pml = torch.arange(C * K).view(K, C).T.reshape(-1)
    pml.fc = torch.nn.Parameter(loss.centroids.detach()[to_pml].T.clone())
    v1, (gx1, gw1) = value_and_grads(lambda: loss(x, labels), [x, loss.centroids])
    v2, (gx2, gw2) = value_and_grads(lambda: pml(x, labels), [x, pml.fc])
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gw1[to_pml], gw2.T)


def test_softtriplet_reads_lrmulti_and_reference_defaults():
    """Reference bug: it read a non-existent loss_softtriplet_lr and always crashed."""
    loss = SoftTripleLoss(n_classes=3, embed_dim=4, lr=1e-4, lrmulti=10.0)
    (group,) = loss.param_groups()
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 0.0
    hp = SoftTripleLoss(n_classes=3, embed_dim=4, lr=1e-5)  # the flag defaults
    assert (hp.n_centroids, hp.margin_delta, hp.gamma, hp.la, hp.reg_weight) == (2, 0.01, 0.1, 8.0, 0.2)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: ProxyNCALoss(n_classes=n, embed_dim=D, lr=1e-5),
        lambda n: ProxyAnchorLoss(n_classes=n, embed_dim=D, lr=1e-5),
        lambda n: SoftmaxLoss(n_classes=n, embed_dim=D),
        lambda n: SoftTripleLoss(n_classes=n, embed_dim=D, lr=1e-5),
    ],
    ids=["proxynca", "proxyanchor", "softmax", "softtriplet"],
)
def test_edge_cases(make):
    x, _ = random_batch(n_classes=3, per_class=1, dim=D, normalize=False)  # every class seen once
    x = x.float().detach().requires_grad_()
    for n_classes, labels in [(3, torch.arange(3)), (1, torch.zeros(3, dtype=torch.long))]:
        value = make(n_classes)(x, labels)
        (grad,) = torch.autograd.grad(value, [x])
        assert torch.isfinite(value) and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="built for 2 classes"):
        make(2)(x, torch.arange(3))
    assert not math.isnan(make(3)(x * 100.0, torch.arange(3)).item())  # unnormalised input
