"""The von Mises-Fisher numerics of criteria/_common.py: log I_ν, log C_d, A_d.

Oracles: scipy.special.ive (log I_ν(κ) = log ive(ν, κ) + κ); where ive underflows to 0 (orders in
the hundreds at κ ≪ ν) a log-space power series summed in float64 with numpy; finite differences
for the gradients, and the analytic derivatives written with scipy (d/dκ log I_ν = I_{ν+1}/I_ν + ν/κ,
d/dκ log C_d = −A_d). The Debye polynomials are checked against their closed forms (DLMF 10.41.10).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln, ive

from criteria._common import _DEBYE_U, bessel_ratio, log_bessel_iv, log_vmf_normalizer

F64 = torch.float64
ORDERS = [63.0, 127.0, 255.0, 511.0]  # d/2 − 1 for d = 128 … 1024
KAPPAS = np.logspace(-2, 4, 25)


def log_iv_oracle(nu: float, x: float) -> float:
    """log I_ν(x): scipy where ive does not underflow, else the series Σ_k (x²/4)^k/(k! Γ(ν+k+1))."""
    value = ive(nu, x)
    if value > 1e-280:
        return math.log(value) + x
    assert x < nu, "the series below is only used (and only converges fast) for x < ν"
    k = np.arange(400)
    terms = k * 2 * math.log(x / 2) - gammaln(k + 1) - gammaln(nu + k + 1) + nu * math.log(x / 2)
    return float(np.logaddexp.reduce(terms))


def ratio_oracle(nu: float, x: float) -> float:
    """I_{ν+1}(x)/I_ν(x) = exp(log I_{ν+1} − log I_ν)."""
    return math.exp(log_iv_oracle(nu + 1, x) - log_iv_oracle(nu, x))


def log_c_oracle(d: int, x: float) -> float:
    nu = d / 2 - 1
    return nu * math.log(x) - d / 2 * math.log(2 * math.pi) - log_iv_oracle(nu, x)


def test_debye_polynomials_match_their_closed_forms():
    """U_1 = (3p − 5p³)/24, U_2 = (81p² − 462p⁴ + 385p⁶)/1152,
    U_3 = (30375p³ − 369603p⁵ + 765765p⁷ − 425425p⁹)/414720 (DLMF 10.41.10)."""
    expected = {
        1: {1: 3 / 24, 3: -5 / 24},
        2: {2: 81 / 1152, 4: -462 / 1152, 6: 385 / 1152},
        3: {3: 30375 / 414720, 5: -369603 / 414720, 7: 765765 / 414720, 9: -425425 / 414720},
    }
    for k, coeffs in expected.items():
        got = {j: c for j, c in enumerate(_DEBYE_U[k]) if c != 0}
        assert got.keys() == coeffs.keys()
        for j, c in coeffs.items():
            assert got[j] == pytest.approx(c, rel=1e-15)
    # every U_k (k ≥ 1) vanishes at p = 0, and the degree of U_k is 3k
    for k, u in enumerate(_DEBYE_U[1:], start=1):
        assert u[0] == 0 and len(u) == 3 * k + 1 and u[-1] != 0


@pytest.mark.parametrize("nu", ORDERS)
def test_log_bessel_iv_large_orders_against_scipy(nu):
    x = torch.tensor(KAPPAS, dtype=F64)
    ours = log_bessel_iv(nu, x).numpy()
    oracle = np.array([log_iv_oracle(nu, k) for k in KAPPAS])
    np.testing.assert_allclose(ours, oracle, rtol=1e-11, atol=1e-11)
    assert np.all(np.isfinite(ours))


@pytest.mark.parametrize("nu", [0.0, 0.5, 3.0, 7.0, 7.5, 15.0, 15.5, 31.0])
def test_log_bessel_iv_small_orders_through_the_recurrence(nu):
    """Orders below the Debye threshold (16) are reached by the downward ratio recurrence."""
    kappas = np.logspace(-3, 4, 30)
    ours = log_bessel_iv(nu, torch.tensor(kappas, dtype=F64)).numpy()
    oracle = np.array([log_iv_oracle(nu, k) for k in kappas])
    np.testing.assert_allclose(ours, oracle, rtol=1e-11, atol=1e-11)


def test_float32_follows_float64_and_keeps_its_dtype():
    x64 = torch.tensor(KAPPAS, dtype=F64)
    for fn in (
        lambda k: log_bessel_iv(255.0, k),
        lambda k: log_vmf_normalizer(512, k),
        lambda k: bessel_ratio(512, k),
    ):
        value = fn(x64.float())
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, fn(x64).float(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("nu", [7.0, 63.0, 511.0])
def test_log_bessel_iv_gradient(nu):
    """Autograd = I_{ν+1}/I_ν + ν/κ (scipy) = central finite differences."""
    kappas = np.logspace(-2, 4, 13)
    x = torch.tensor(kappas, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(log_bessel_iv(nu, x).sum(), x)
    analytic = np.array([ratio_oracle(nu, k) + nu / k for k in kappas])
    np.testing.assert_allclose(grad.numpy(), analytic, rtol=1e-10)
    h = 1e-6 * x.detach()
    fd = (log_bessel_iv(nu, x.detach() + h) - log_bessel_iv(nu, x.detach() - h)) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), fd.numpy(), rtol=1e-6)


@pytest.mark.parametrize("d", [3, 16, 128, 256, 512, 1024])
def test_bessel_ratio_against_scipy_and_its_gradient(d):
    kappas = np.logspace(-2, 4, 25)
    x = torch.tensor(kappas, dtype=F64, requires_grad=True)
    ratio = bessel_ratio(d, x)
    oracle = np.array([ratio_oracle(d / 2 - 1, k) for k in kappas])
    np.testing.assert_allclose(ratio.detach().numpy(), oracle, rtol=1e-11)
    assert torch.all((ratio > 0) & (ratio < 1))
    # the two ends: A_d ≈ κ/d as κ → 0, 1 − A_d ≈ (d − 1)/(2κ) as κ → ∞
    assert float(ratio[0].detach()) == pytest.approx(kappas[0] / d, rel=1e-3)
    assert 1 - float(ratio[-1].detach()) == pytest.approx((d - 1) / (2 * kappas[-1]), rel=0.1)
    (grad,) = torch.autograd.grad(ratio.sum(), x)
    # central differences of scipy's ratio; the step 1e-3·κ keeps scipy's last digits out of the
    # derivative (A_d' is ~1e-8 at κ = 1e4) and the truncation error near 1e-7
    up = np.array([ratio_oracle(d / 2 - 1, k * 1.001) for k in kappas])
    down = np.array([ratio_oracle(d / 2 - 1, k * 0.999) for k in kappas])
    np.testing.assert_allclose(grad.numpy(), (up - down) / (0.002 * kappas), rtol=1e-5)


@pytest.mark.parametrize("d", [16, 128, 512, 1024])
def test_log_vmf_normalizer_value_and_gradient(d):
    kappas = np.logspace(-2, 4, 25)
    x = torch.tensor(kappas, dtype=F64, requires_grad=True)
    value = log_vmf_normalizer(d, x)
    oracle = np.array([log_c_oracle(d, k) for k in kappas])
    np.testing.assert_allclose(value.detach().numpy(), oracle, rtol=1e-11, atol=1e-10)
    (grad,) = torch.autograd.grad(value.sum(), x)
    np.testing.assert_allclose(grad.numpy(), [-ratio_oracle(d / 2 - 1, k) for k in kappas], rtol=1e-10)


def test_log_vmf_normalizer_gradient_in_float32_at_small_kappa():
    """−A_d(κ) ≈ −κ/d is tiny next to the two terms of order ν/κ it is the difference of; it must
    come out right in float32 (differentiating ν log κ − log I_ν term by term would not)."""
    kappas = np.array([1e-3, 1e-2, 0.1, 1.0])
    x = torch.tensor(kappas, dtype=torch.float32, requires_grad=True)
    (grad,) = torch.autograd.grad(log_vmf_normalizer(1024, x).sum(), x)
    np.testing.assert_allclose(grad.numpy(), [-ratio_oracle(511, k) for k in kappas], rtol=1e-5)


def test_extreme_concentrations_stay_finite():
    for dtype in (torch.float32, F64):
        x = torch.tensor([0.0, 1e-30, 1e-6, 1e-3, 1.0, 1e5, 1e7, 1e30], dtype=dtype, requires_grad=True)
        for d in (2, 3, 16, 512):
            for fn in (lambda k, d=d: log_vmf_normalizer(d, k), lambda k, d=d: bessel_ratio(d, k)):
                value = fn(x)
                (grad,) = torch.autograd.grad(value.sum(), x)
                assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (d, dtype)
        value = log_bessel_iv(255.0, x)
        assert torch.isfinite(value).all()


def test_bad_input():
    x = torch.tensor([1.0])
    with pytest.raises(ValueError, match="dimension d >= 2"):
        log_vmf_normalizer(1, x)
    with pytest.raises(ValueError, match="dimension d >= 2"):
        bessel_ratio(0, x)
    with pytest.raises(ValueError, match="order nu >= 0"):
        log_bessel_iv(-0.5, x)
