"""Margin-based softmax losses: arcface, cosface, sphereface, subcenter_arcface, adacos,
curricularface, elasticface, adaface.

Brute force: per-sample, per-class loops from the papers' formulas (float64), loss and gradients
w.r.t. the embeddings and the class weights. pytorch-metric-learning (PML) where it has the loss
(its W is our weights transposed; margins in degrees for the ArcFace family):
* arcface = PML ArcFaceLoss (same θ + m > π continuation); cosface = PML CosFaceLoss;
* sphereface (anneal λ = 0) = PML SphereFaceLoss; subcenter_arcface = PML SubCenterArcFaceLoss;
* elasticface with σ = 0 = PML ArcFaceLoss / CosFaceLoss.
PML has no AdaCos, CurricularFace, ElasticFace or AdaFace: loops only (their stateful parts,
the adaptive scale, t and the norm statistics, are checked after a step and through state_dict).
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses

from criteria.adacos import AdaCosLoss
from criteria.adaface import AdaFaceLoss
from criteria.arcface import ArcFaceLoss
from criteria.cosface import CosFaceLoss
from criteria.curricularface import CurricularFaceLoss
from criteria.elasticface import ElasticFaceLoss
from criteria.sphereface import SphereFaceLoss
from criteria.subcenter_arcface import SubCenterArcFaceLoss
from tests.criteria.helpers import assert_same_loss_and_grads, random_batch, value_and_grads

C, D = 5, 8


def _batch(seed, scale_norms=False):
    x, labels = random_batch(n_classes=4, per_class=3, dim=D, seed=seed, normalize=False)
    if scale_norms:  # spread the norms (AdaFace, SphereFace use them)
        x.data.mul_(torch.linspace(0.5, 3.0, len(x), dtype=x.dtype)[:, None])
    return x, labels


def _unit(v):
    return v / v.norm()


def _cos(x, w, i, c):
    return _unit(x[i]) @ _unit(w[c])


def _ce(logits, y):
    return torch.logsumexp(torch.stack(logits), 0) - logits[y]


def _arc_target(cos_y, m):
    theta = torch.arccos(cos_y)
    return torch.cos(theta + m) if float(theta.detach()) + m <= math.pi else cos_y - m * math.sin(m)


def _check_against_pml(ours, pml, x, labels):
    pml.W = torch.nn.Parameter(ours.class_weights.detach().T.clone())
    v1, (gx1, gw1) = value_and_grads(lambda: ours(x, labels), [x, ours.class_weights])
    v2, (gx2, gw2) = value_and_grads(lambda: pml(x, labels), [x, pml.W])
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gw1, gw2.T)


# ---- arcface / cosface / sphereface / subcenter ---------------------------------------------------
def test_arcface_matches_loop_and_pml():
    x, labels = _batch(41)
    loss = ArcFaceLoss(n_classes=C, embed_dim=D, angular_margin=0.5, feature_scale=16.0).double()
    w = loss.class_weights
    with torch.no_grad():  # make one target angle exceed π − m, to exercise the continuation
        w[labels[0]] = -x[0].detach()

    def reference():
        terms = []
        for i in range(len(x)):
            y = int(labels[i])
            logits = [
                16.0 * (_arc_target(_cos(x, w, i, c), 0.5) if c == y else _cos(x, w, i, c)) for c in range(C)
            ]
            terms.append(_ce(logits, y))
        return torch.stack(terms).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, w], rtol=1e-6)
    _check_against_pml(
        loss,
        losses.ArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=16),
        x,
        labels,
    )


def test_arcface_negative_target_cosine_keeps_its_gradient():
    """Reference bug: cosines clamped to [1e-10, 1] froze every negative target cosine."""
    x = torch.tensor([[-1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    loss = ArcFaceLoss(n_classes=2, embed_dim=2).double()
    with torch.no_grad():
        loss.class_weights.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss(x, torch.tensor([0])).backward()
    assert x.grad.abs().sum() > 1e-3


def test_cosface_matches_loop_and_pml():
    x, labels = _batch(42)
    loss = CosFaceLoss(n_classes=C, embed_dim=D, margin=0.35, scale=64.0).double()
    w = loss.class_weights

    def reference():
        return torch.stack(
            [
                _ce(
                    [64.0 * (_cos(x, w, i, c) - (0.35 if c == labels[i] else 0.0)) for c in range(C)],
                    int(labels[i]),
                )
                for i in range(len(x))
            ]
        ).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, w])
    _check_against_pml(
        loss, losses.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=64), x, labels
    )


@pytest.mark.filterwarnings("ignore:__array_wrap__")  # inside PML's LargeMarginSoftmaxLoss
@pytest.mark.parametrize("anneal", [0.0, 5.0])
def test_sphereface_matches_loop(anneal):
    x, labels = _batch(43, scale_norms=True)
    m = 4
    loss = SphereFaceLoss(n_classes=C, embed_dim=D, margin=m, scale=1.0, anneal=anneal).double()
    w = loss.class_weights

    def psi(cos):
        theta = torch.arccos(cos)
        k = math.floor(float(theta.detach()) * m / math.pi)
        return (-1) ** k * torch.cos(m * theta) - 2 * k

    def reference():
        terms = []
        for i in range(len(x)):
            y = int(labels[i])
            logits = [
                x[i].norm()
                * (
                    (anneal * _cos(x, w, i, c) + psi(_cos(x, w, i, c))) / (1 + anneal)
                    if c == y
                    else _cos(x, w, i, c)
                )
                for c in range(C)
            ]
            terms.append(_ce(logits, y))
        return torch.stack(terms).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, w], rtol=1e-6)
    if anneal == 0.0:
        _check_against_pml(
            loss, losses.SphereFaceLoss(num_classes=C, embedding_size=D, margin=m, scale=1), x, labels
        )


def test_sphereface_psi_is_monotonic():
    """ψ(θ) must decrease over [0, π] (that is what the −2k term is for). Two classes with the same
    weight and unit inputs: CE = log(1 + e^{cos θ − ψ(θ)}), so ψ = cos θ − log(e^CE − 1)."""
    two = SphereFaceLoss(n_classes=2, embed_dim=2).double()
    with torch.no_grad():
        two.class_weights.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    theta = torch.linspace(0.01, math.pi - 0.01, 200, dtype=torch.float64)
    x = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    ce = torch.stack([two(x[i : i + 1], torch.tensor([0])) for i in range(len(x))])
    psi = torch.cos(theta) - torch.log(torch.expm1(ce))
    assert (psi[1:] < psi[:-1]).all()
    assert psi[-1].item() == pytest.approx(-7.0, abs=1e-3)  # k = 3 at θ → π: −cos(4π) − 6


def test_subcenter_arcface_matches_loop_and_pml():
    x, labels = _batch(44)
    K = 3
    loss = SubCenterArcFaceLoss(n_classes=C, embed_dim=D, margin=0.5, scale=64.0, sub_centers=K).double()
    w = loss.class_weights

    def reference():
        terms = []
        for i in range(len(x)):
            y = int(labels[i])
            cos = [
                torch.stack([_cos(x, w, i, k * C + c) for k in range(K)]).max() for c in range(C)
            ]  # row k·C + c
            terms.append(_ce([64.0 * (_arc_target(cos[c], 0.5) if c == y else cos[c]) for c in range(C)], y))
        return torch.stack(terms).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, w])
    pml = losses.SubCenterArcFaceLoss(
        num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64, sub_centers=K
    )
    to_pml = torch.arange(C * K).view(K, C).T.reshape(-1)  # PML column c·K + k is our row k·C + c
    pml.W = torch.nn.Parameter(w.detach()[to_pml].T.clone())
    v1, (gx1, gw1) = value_and_grads(lambda: loss(x, labels), [x, w])
    v2, (gx2, gw2) = value_and_grads(lambda: pml(x, labels), [x, pml.W])
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gw1[to_pml], gw2.T)


# ---- adacos -------------------------------------------------------------------------------------
def test_adacos_fixed_and_dynamic_scale():
    x, labels = _batch(45)
    loss = AdaCosLoss(n_classes=C, embed_dim=D).double()
    w = loss.class_weights
    s0 = math.sqrt(2) * math.log(C - 1)
    assert loss.scale.item() == pytest.approx(s0)

    def reference(s):
        return torch.stack(
            [_ce([s * _cos(x, w, i, c) for c in range(C)], int(labels[i])) for i in range(len(x))]
        ).mean()

    loss.eval()  # no update in eval mode
    assert_same_loss_and_grads(lambda: loss(x, labels), lambda: reference(s0), [x, w])
    assert loss.scale.item() == pytest.approx(s0)

    # dynamic update (eq. 15-16), from the previous scale, before the step's loss
    with torch.no_grad():
        b_avg = sum(
            math.exp(s0 * float(_cos(x, w, i, c))) for i in range(len(x)) for c in range(C) if c != labels[i]
        ) / len(x)
        thetas = sorted(math.acos(float(_cos(x, w, i, int(labels[i])))) for i in range(len(x)))
        theta_med = thetas[(len(thetas) - 1) // 2]
        s1 = math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))
    loss.train()
    value = loss(x, labels)
    assert loss.scale.item() == pytest.approx(s1)
    torch.testing.assert_close(value, reference(s1))

    fresh = AdaCosLoss(n_classes=C, embed_dim=D).double()
    fresh.load_state_dict(loss.state_dict())
    assert fresh.scale.item() == pytest.approx(s1)


# ---- curricularface ------------------------------------------------------------------------------
def test_curricularface_matches_loop_and_updates_t():
    x, labels = _batch(46)
    m, s, alpha = 0.5, 64.0, 0.01
    loss = CurricularFaceLoss(n_classes=C, embed_dim=D, margin=m, scale=s, momentum=alpha).double()
    w = loss.class_weights
    with torch.no_grad():
        loss.t.fill_(0.3)
        t = 0.3 * (1 - alpha) + alpha * float(
            torch.stack([_cos(x, w, i, int(labels[i])) for i in range(len(x))]).mean()
        )

    def reference():
        terms = []
        for i in range(len(x)):
            y = int(labels[i])
            cos_y = _cos(x, w, i, y)
            border = math.cos(math.acos(float(cos_y.detach())) + m)
            logits = []
            for c in range(C):
                cos = _cos(x, w, i, c)
                if c == y:
                    logits.append(s * _arc_target(cos, m))
                elif float(cos.detach()) > border:  # hard negative
                    logits.append(s * cos * (t + cos))
                else:
                    logits.append(s * cos)
            terms.append(_ce(logits, y))
        return torch.stack(terms).mean()

    # the loop must contain hard negatives for the test to mean anything
    with torch.no_grad():
        assert any(
            float(_cos(x, w, i, c)) > math.cos(math.acos(float(_cos(x, w, i, int(labels[i])))) + m)
            for i in range(len(x))
            for c in range(C)
            if c != labels[i]
        )
    v1, g1 = value_and_grads(lambda: loss(x, labels), [x, w])  # training mode: t is updated first
    assert loss.t.item() == pytest.approx(t)
    v2, g2 = value_and_grads(reference, [x, w])
    torch.testing.assert_close(v1, v2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)
    loss.eval()
    loss(x, labels)
    assert loss.t.item() == pytest.approx(t)  # no update in eval mode


# ---- elasticface --------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["arc", "cos"])
def test_elasticface_with_zero_std_is_arcface_or_cosface(form):
    x, labels = _batch(47)
    loss = ElasticFaceLoss(n_classes=C, embed_dim=D, form=form, std=0.0, scale=64.0).double()
    margin = 0.5 if form == "arc" else 0.35
    assert loss.margin == margin  # form-dependent default
    pml = (
        losses.ArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64)
        if form == "arc"
        else losses.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=64)
    )
    _check_against_pml(loss, pml, x, labels)


@pytest.mark.parametrize("form", ["arc", "cos"])
def test_elasticface_random_margins_match_loop(form, monkeypatch):
    x, labels = _batch(48)
    loss = ElasticFaceLoss(n_classes=C, embed_dim=D, form=form, std=0.05, scale=64.0).double()
    w = loss.class_weights
    margins = torch.linspace(0.2, 0.6, len(x), dtype=torch.float64)
    monkeypatch.setattr(loss, "sample_margins", lambda n, like: margins)

    def reference():
        terms = []
        for i in range(len(x)):
            y, mi = int(labels[i]), float(margins[i])
            target = _arc_target(_cos(x, w, i, y), mi) if form == "arc" else _cos(x, w, i, y) - mi
            terms.append(_ce([64.0 * (target if c == y else _cos(x, w, i, c)) for c in range(C)], y))
        return torch.stack(terms).mean()

    assert_same_loss_and_grads(lambda: loss(x, labels), reference, [x, w])


def test_elasticface_margin_distribution():
    loss = ElasticFaceLoss(n_classes=2, embed_dim=2, form="arc", std=0.05)
    like = torch.zeros(1, dtype=torch.float64)
    draws = loss.sample_margins(20000, like)
    assert draws.mean().item() == pytest.approx(0.5, abs=2e-3) and draws.std().item() == pytest.approx(
        0.05, rel=0.05
    )
    loss.eval()
    assert torch.equal(loss.sample_margins(4, like), torch.full((4,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="'arc' or 'cos'"):
        ElasticFaceLoss(n_classes=2, embed_dim=2, form="tan")


# ---- adaface ------------------------------------------------------------------------------------
def test_adaface_matches_loop_and_updates_statistics():
    x, labels = _batch(49, scale_norms=True)
    m, h, s, a, eps = 0.4, 0.333, 64.0, 0.01, 1e-3
    loss = AdaFaceLoss(n_classes=C, embed_dim=D, margin=m, h=h, scale=s, momentum=a).double()
    w = loss.class_weights
    norms = [float(x[i].detach().norm()) for i in range(len(x))]
    mean_b = sum(norms) / len(norms)
    std_b = math.sqrt(sum((v - mean_b) ** 2 for v in norms) / (len(norms) - 1))
    mu, sigma = a * mean_b + (1 - a) * 20.0, a * std_b + (1 - a) * 100.0  # updated before use

    def reference():
        terms = []
        for i in range(len(x)):
            y = int(labels[i])
            z = max(-1.0, min(1.0, (norms[i] - mu) / (sigma + eps) * h))
            logits = []
            for c in range(C):
                cos = torch.clamp(_cos(x, w, i, c), -1 + eps, 1 - eps)
                if c == y:
                    theta = torch.clamp(torch.arccos(cos) - m * z, eps, math.pi - eps)
                    logits.append(s * (torch.cos(theta) - (m + m * z)))
                else:
                    logits.append(s * cos)
            terms.append(_ce(logits, y))
        return torch.stack(terms).mean()

    v1, g1 = value_and_grads(lambda: loss(x, labels), [x, w])
    assert loss.norm_mean.item() == pytest.approx(mu) and loss.norm_std.item() == pytest.approx(sigma)
    v2, g2 = value_and_grads(reference, [x, w])
    torch.testing.assert_close(v1, v2)
    for p, q in zip(g1, g2, strict=True):
        torch.testing.assert_close(p, q)
    fresh = AdaFaceLoss(n_classes=C, embed_dim=D).double()
    fresh.load_state_dict(loss.state_dict())
    assert fresh.norm_mean.item() == pytest.approx(mu)


# ---- shared edge cases --------------------------------------------------------------------------
MAKERS = {
    "arcface": lambda n: ArcFaceLoss(n_classes=n, embed_dim=D),
    "cosface": lambda n: CosFaceLoss(n_classes=n, embed_dim=D),
    "sphereface": lambda n: SphereFaceLoss(n_classes=n, embed_dim=D),
    "subcenter_arcface": lambda n: SubCenterArcFaceLoss(n_classes=n, embed_dim=D),
    "adacos": lambda n: AdaCosLoss(n_classes=n, embed_dim=D),
    "curricularface": lambda n: CurricularFaceLoss(n_classes=n, embed_dim=D),
    "elasticface": lambda n: ElasticFaceLoss(n_classes=n, embed_dim=D),
    "adaface": lambda n: AdaFaceLoss(n_classes=n, embed_dim=D),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_edge_cases(name):
    make = MAKERS[name]
    x = torch.randn(3, D, requires_grad=True)
    for n_classes, labels in [
        (3, torch.arange(3)),
        (1, torch.zeros(3, dtype=torch.long)),
        (5, torch.tensor([4, 4, 0])),
    ]:
        value = make(n_classes)(x, labels)
        (grad,) = torch.autograd.grad(value, [x])
        assert torch.isfinite(value) and torch.isfinite(grad).all()
    single = make(4)(x[:1], torch.tensor([2]))  # batch of one
    assert torch.isfinite(single)
    with pytest.raises(ValueError, match="built for 2 classes"):
        make(2)(x, torch.arange(3))
