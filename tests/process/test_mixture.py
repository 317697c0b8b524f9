"""Gaussian mixture: exact E[x0 | x_t] against quadrature, Tweedie and the one-component closed form."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.errors import DistillError
from distill.process import EDM, Flow, GaussianMixture, Trig, VPCosine, VPDiscrete, VPLinear

SETTINGS = settings(max_examples=30, deadline=None)
F64 = torch.float64
PROCESSES = [VPCosine(), VPLinear(), VPDiscrete.from_betas("linear"), EDM(), Flow(), Trig()]
each_process = pytest.mark.parametrize("p", PROCESSES, ids=[p.name for p in PROCESSES])


def coefficients(p, u: float, snr_lo: float = 1e-4, snr_hi: float = 1e3) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma at a time where sigma/alpha >= 0.03 (so the quadrature grid resolves the likelihood)."""
    lo = max(p.t_min, float(p.t_at_snr(torch.tensor(snr_hi, dtype=F64))))
    hi = min(p.t_max, float(p.t_at_snr(torch.tensor(snr_lo, dtype=F64))))
    t = torch.tensor(lo + u * (hi - lo), dtype=F64)
    return p.alpha(t), p.sigma(t)


MIX_1D = GaussianMixture(torch.tensor([[-2.0], [0.5], [3.0]], dtype=F64), torch.tensor([0.3, 1.0, 0.5]), torch.tensor([0.2, 0.5, 0.3]))


@each_process
@SETTINGS
@given(u=st.floats(0.0, 1.0), x=st.floats(-8.0, 8.0))
def test_posterior_mean_matches_quadrature(p, u, x):
    """E[x0|x_t] = int x0 p(x0) N(x_t; a x0, s^2) dx0 / int p(x0) N(x_t; a x0, s^2) dx0 on a fine grid."""
    a, s = coefficients(p, u)
    x_t = a * torch.tensor([[x]], dtype=F64)  # posterior mass lies between x_t / alpha and the data, inside the grid
    grid = torch.linspace(-20, 20, 8001, dtype=F64)  # h = 0.005: trapezoid error ~ exp(-2 pi^2 (0.03 / h)^2)
    log_w = MIX_1D.log_prob(grid[:, None]) - 0.5 * ((x_t[0, 0] - a * grid) / s) ** 2
    w = torch.softmax(log_w, 0)
    expected = (w * grid).sum()
    got = MIX_1D.posterior_mean(x_t, a, s)
    torch.testing.assert_close(got[0, 0], expected, rtol=1e-7, atol=1e-7)


@each_process
@SETTINGS
@given(u=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_tweedie(p, u, seed):
    """E[x0|x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha (Efron 2011), grad by autograd."""
    mix = GaussianMixture.ring().to(F64)
    a, s = coefficients(p, u, snr_lo=1e-3)
    g = torch.Generator().manual_seed(seed)
    x_t = (a * mix.sample(8, g).x + s * torch.randn(8, 2, generator=g, dtype=F64)).requires_grad_(True)
    (score,) = torch.autograd.grad(mix.marginal_log_prob(x_t, a, s).sum(), x_t)
    x_t = x_t.detach()
    torch.testing.assert_close(mix.posterior_mean(x_t, a, s), (x_t + s**2 * score) / a, rtol=1e-8, atol=1e-8)


@SETTINGS
@given(a=st.floats(0.01, 1.0), s=st.floats(0.01, 10.0), seed=st.integers(0, 2**31 - 1))
def test_one_component_closed_form(a, s, seed):
    """x0 ~ N(mu, c^2 I): E[x0|x_t] = mu + a c^2 / (a^2 c^2 + s^2) (x_t - a mu) (Gaussian conditioning)."""
    mu, c = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64), 0.7
    mix = GaussianMixture(mu, torch.tensor([c], dtype=F64))
    x_t = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * 3
    expected = mu + a * c**2 / (a**2 * c**2 + s**2) * (x_t - a * mu)
    torch.testing.assert_close(mix.posterior_mean(x_t, a, s), expected, rtol=1e-12, atol=1e-12)
    var = a**2 * c**2 + s**2
    log_p = -0.5 * ((x_t - a * mu) ** 2).sum(-1) / var - 1.5 * math.log(2 * math.pi * var)
    torch.testing.assert_close(mix.marginal_log_prob(x_t, a, s), log_p)


def test_responsibilities_and_shapes_of_alpha_sigma():
    mix = GaussianMixture.ring()
    x_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    a, s = torch.rand(6, dtype=F64) + 0.1, torch.rand(6, dtype=F64) + 0.1
    r = mix.responsibilities(x_t, a, s)
    assert r.shape == (6, 8)
    torch.testing.assert_close(r.sum(-1), torch.ones(6, dtype=F64))
    out = mix.posterior_mean(x_t, a, s)
    assert out.dtype == torch.float32 and out.shape == (6, 2)
    torch.testing.assert_close(mix.posterior_mean(x_t, a[:, None], s[:, None]), out)
    torch.testing.assert_close(mix.posterior_mean(x_t, 0.5, 0.7), mix.posterior_mean(x_t, torch.full((6,), 0.5), 0.7))


def test_far_away_and_pure_noise_are_stable():
    mix = GaussianMixture.ring()
    x_t = torch.tensor([[1e6, 0.0], [0.0, -1e8], [3e4, 3e4]])
    r = mix.responsibilities(x_t, 1.0, 1e-3)
    assert bool(torch.isfinite(r).all()) and torch.allclose(r.sum(-1), torch.ones(3, dtype=F64))
    assert r.argmax(-1).tolist() == [0, 6, 1]  # the nearest component on the ring
    assert bool(torch.isfinite(mix.posterior_mean(x_t, 1.0, 1e-3)).all())
    # alpha = 0: x_t carries no information, E[x0|x_t] = E[x0] (0 for the ring)
    torch.testing.assert_close(mix.posterior_mean(x_t, 0.0, 1.0), torch.zeros(3, 2), rtol=0, atol=1e-5)


def test_sample_matches_weights_and_components():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    mix = GaussianMixture.grid(2, spacing=10.0, std=0.5, weights=w * 3)  # normalised on construction
    torch.testing.assert_close(mix.weights, w)
    n = 40000
    out = mix.sample(n, torch.Generator().manual_seed(0))
    assert out.x.shape == (n, 2) and out.component.shape == (n,)
    freq = torch.bincount(out.component, minlength=4).double() / n
    assert bool(((freq - w.double()).abs() < 5 * torch.sqrt(w * (1 - w) / n)).all())
    dist = (out.x - mix.means[out.component]).norm(dim=-1)
    assert float(dist.max()) < 0.5 * 6  # every sample near its own component


def test_log_prob_and_builders():
    ring = GaussianMixture.ring(k=5, radius=2.0, std=0.1)
    assert ring.means.shape == (5, 2) and torch.allclose(ring.means.norm(dim=-1), torch.full((5,), 2.0))
    grid = GaussianMixture.grid(3)
    assert grid.k == 9 and grid.dim == 2 and torch.allclose(grid.means.mean(0), torch.zeros(2))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    dens = sum(w * torch.exp(-0.5 * ((x - m) ** 2).sum(-1) / 0.1**2) / (2 * math.pi * 0.1**2)
               for w, m in zip(ring.weights.double(), ring.means.double()))
    torch.testing.assert_close(ring.log_prob(x), torch.log(dens))
    with pytest.raises(DistillError, match="means"):
        GaussianMixture(torch.zeros(3), torch.ones(3))
    with pytest.raises(DistillError, match="sum to 0"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(2), torch.zeros(2))
