"""Samplers against the exact Gaussian-mixture denoiser (distill.samplers).

The mixture's posterior mean E[x0 | x_t] is exact for any Gaussian process, so a
correct PF-ODE solver must reproduce the data distribution up to discretisation
error, and its endpoint must converge to the exact ODE solution at the solver's order.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.nets import MLPDenoiserNet
from distill.process import GaussianMixture, make_process, sampling_schedule
from distill.samplers import (
    SAMPLERS,
    SampleResult,
    consistency,
    ddim,
    ddim_noise_scale,
    dpmpp_2m,
    euler,
    get_sampler,
    heun,
    multistep,
    onestep,
    sample,
)

F64 = torch.float64


class ExactX0(nn.Module):
    """The mixture's exact x0-prediction E[x0 | x_t] as a network (time input = process time)."""

    def __init__(self, mixture: GaussianMixture, process) -> None:
        super().__init__()
        self.mixture, self.process = mixture, process

    def forward(self, x, t, cond=None):
        return self.mixture.posterior_mean(x, self.process.alpha(t), self.process.sigma(t))


class ExactClassX0(nn.Module):
    """Class-conditional exact denoiser: cond = component index k (one Gaussian), null = K (whole mixture)."""

    def __init__(self, mixture: GaussianMixture, process) -> None:
        super().__init__()
        self.mixture, self.process = mixture, process

    def forward(self, x, t, cond=None):
        a = self.process.alpha(t).to(F64)[:, None]
        s = self.process.sigma(t).to(F64)[:, None]
        full = self.mixture.posterior_mean(x, a, s).to(F64)
        if cond is None:
            return full.to(x.dtype)
        k = cond.clamp(max=self.mixture.k - 1)
        mu, sd = self.mixture.means.to(F64)[k], self.mixture.stds.to(F64)[k, None]
        one = mu + a * sd**2 / (a**2 * sd**2 + s**2) * (x.to(F64) - a * mu)  # Gaussian conditioning
        return torch.where((cond == self.mixture.k)[:, None], full, one).to(x.dtype)


def exact_denoiser(process_name: str, mixture: GaussianMixture | None = None) -> Denoiser:
    process = make_process(process_name)
    return Denoiser(ExactX0(mixture or GaussianMixture.ring(8, 4.0, 0.5), process), process, prediction="x0")


def sliced_w1(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1: mean over random unit directions of the 1-D W1 of the projections.

    For equal sample sizes the 1-D W1 between empirical measures is the mean absolute
    difference of the sorted projections.
    """
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(a.shape[1], n_proj, generator=g, dtype=F64)
    d = d / d.norm(dim=0)
    pa = (a.to(F64) @ d).sort(dim=0).values
    pb = (b.to(F64) @ d).sort(dim=0).values
    return float((pa - pb).abs().mean())


def x_T_from_marginal(process, mixture: GaussianMixture, n: int, g: torch.Generator, dtype=torch.float32):
    """Exact x_T ~ p_{t_max} (alpha_T x0 + sigma_T eps), so only the solver's error is tested."""
    t = torch.tensor(process.t_max, dtype=F64)
    x0 = mixture.sample(n, g).x.to(F64)
    return (float(process.alpha(t)) * x0 + float(process.sigma(t)) * torch.randn(n, 2, generator=g, dtype=F64)).to(dtype)


def sw_tolerance(mixture: GaussianMixture, n: int, g: torch.Generator, process, t_last: float) -> tuple[float, float]:
    """Tolerance for SW(generated, fresh truth) and the noise baseline it is built from.

    baseline = mean SW between independent pairs of n true samples (pure sampling
    noise). A perfect sampler's SW to fresh data has this same distribution; over seeds it
    ranges ~0.7x-1.7x of its mean at n = 4000 (measured 0.05-0.12 around 0.07), so
    tol = 3 x baseline clears that spread, plus the bias the samplers have by design: they return
    E[x0 | x_{t_{N-1}}], which shrinks each component's spread from s to
    sqrt(s^2 - s^2 sigma^2 / (alpha^2 s^2 + sigma^2)) at t_{N-1}; in 1-D the W1 between two
    centred Gaussians is at most the W2 = |difference of stds|, so that is the allowance.
    """
    baseline = sum(sliced_w1(mixture.sample(n, g).x, mixture.sample(n, g).x, seed=i) for i in range(4)) / 4
    t = torch.tensor(t_last, dtype=F64)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    sd = float(mixture.stds.max())
    shrink = sd - math.sqrt(sd**2 - sd**2 * s**2 / (a**2 * sd**2 + s**2))
    return 3.0 * baseline + shrink, baseline


# ---------------------------------------------------------------------------
# (a) Heun reproduces the data distribution
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("process_name,schedule", [("flow", "uniform"), ("vp", "karras")])
def test_heun_matches_mixture(process_name, schedule):
    # Measured over seeds 0-4 (n = 4000, std 0.5 ring): SW(heun, 18 steps) 0.05-0.12, baseline
    # 0.055-0.09, tol 0.17-0.28; the negative control (Euler, 3 steps) sits at 0.49-0.62.
    g = torch.Generator().manual_seed(0)
    den = exact_denoiser(process_name)
    mix = den.net.mixture
    n = 4000
    x_T = x_T_from_marginal(den.process, mix, n, g)
    ts = sampling_schedule(den.process, 18, kind=schedule)
    out = heun(den, x_T, timesteps=ts)
    assert out.nfe == 35 and out.x0.shape == (n, 2) and out.trajectory is None
    tol, baseline = sw_tolerance(mix, n, g, den.process, float(ts[-2]))
    err = sliced_w1(out.x0, mix.sample(n, g).x, seed=7)
    assert err < tol, f"SW {err:.4f} >= tol {tol:.4f} (noise baseline {baseline:.4f})"
    # negative control: a visibly wrong sampler fails the same test, so the test has power.
    bad = euler(den, x_T, timesteps=sampling_schedule(den.process, 3, kind=schedule))
    assert sliced_w1(bad.x0, mix.sample(n, g).x, seed=7) > tol


# ---------------------------------------------------------------------------
# (b) convergence order against a fine reference
# ---------------------------------------------------------------------------


def _endpoint_errors(den, x_T, schedule, solver, ns, ref):
    return [
        float((solver(den, x_T, timesteps=sampling_schedule(den.process, n, kind=schedule)).x0 - ref).norm(dim=1).mean())
        for n in ns
    ]


@pytest.mark.parametrize("process_name,schedule", [("flow", "uniform"), ("vp", "logsnr")])
def test_convergence_order(process_name, schedule):
    # Same x_T (float64), endpoint error vs Heun with 1024 steps, mean over 256 samples.
    # Global error ~ C h^p: halving h divides it by 2^p, i.e. ~4 for Heun (p = 2) and ~2 for
    # Euler (p = 1). The final denoising jump (x0 prediction at t_{N-1}) is one first-order
    # step with local error O(h^2), so it does not lower either order.
    # Measured ratios err(32) / err(64): flow/uniform heun 3.86, euler 2.00;
    # vp/logsnr heun 3.83, euler 1.95 (std 0.5 ring of radius 4).
    g = torch.Generator().manual_seed(1)
    den = exact_denoiser(process_name)
    x_T = den.process.prior((256, 2), generator=g, dtype=F64)
    ref = heun(den, x_T, timesteps=sampling_schedule(den.process, 1024, kind=schedule)).x0
    e_heun = _endpoint_errors(den, x_T, schedule, heun, (32, 64), ref)
    e_euler = _endpoint_errors(den, x_T, schedule, euler, (32, 64), ref)
    r_heun, r_euler = e_heun[0] / e_heun[1], e_euler[0] / e_euler[1]
    assert 3.0 < r_heun < 5.5, (e_heun, r_heun)
    assert 1.6 < r_euler < 2.6, (e_euler, r_euler)
    # The reference's own error is ~ (64/1024)^2 = 1/256 of Heun-64's, so it does not bias the
    # ratios. At equal steps the second-order solver is far closer (measured 9-120x).
    assert e_heun[1] < e_euler[1] / 4


@pytest.mark.parametrize("process_name", ["flow", "vp", "edm", "trig"])
def test_heun_exact_gaussian_ode(process_name):
    # One Gaussian N(mu, s^2 I): the PF-ODE keeps z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2)
    # constant, so the exact endpoint is x(0) = mu + s z_T. Against this closed form Heun on the
    # karras schedule converges at second order: measured max error at 64 -> 128 steps
    # edm 7.3e-3 -> 1.8e-3 (from sigma = 80), trig 4.6e-3 -> 1.2e-3, vp 1.8e-3 -> 4.4e-4,
    # flow 2.0e-3 -> 5.7e-4. A wrong velocity sign or time convention fails by O(1).
    mu, sd = torch.tensor([[1.5, -0.5]]), 0.7
    mix = GaussianMixture(mu, torch.tensor([sd]))
    den = exact_denoiser(process_name, mix)
    process = den.process
    g = torch.Generator().manual_seed(2)
    x_T = process.prior((128, 2), generator=g, dtype=F64)
    t = torch.tensor(process.t_max, dtype=F64)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    z = (x_T - a * mu.to(F64)) / math.sqrt(a * a * sd * sd + s * s)
    exact = mu.to(F64) + sd * z
    errs = [
        float((heun(den, x_T, timesteps=sampling_schedule(process, n, kind="karras")).x0 - exact).abs().max())
        for n in (64, 128)
    ]
    assert errs[1] < 3e-3 and errs[0] / errs[1] > 3.0, errs


# ---------------------------------------------------------------------------
# (c) DDIM
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("process_name", ["flow", "vp", "edm"])
def test_ddim_eta0_one_step_closed_form(process_name):
    den = exact_denoiser(process_name)
    process = den.process
    g = torch.Generator().manual_seed(3)
    x_T = process.prior((64, 2), generator=g, dtype=F64)
    ts = sampling_schedule(process, 2)  # t_max -> t_1 (a DDIM step) -> final denoising
    out = ddim(den, x_T, timesteps=ts, eta=0.0, return_trajectory=True)
    t0, t1 = ts[0].expand(64), ts[1].expand(64)
    a0, s0, a1, s1 = (float(f(ts[i])) for i, f in ((0, process.alpha), (0, process.sigma), (1, process.alpha), (1, process.sigma)))
    x0 = den.predict(x_T, t0)
    eps = (x_T - a0 * x0) / s0
    x1 = a1 * x0 + s1 * eps  # Song et al. 2021, eq. 12 with sigma_t = 0
    assert out.nfe == 2 and len(out.trajectory) == 3
    torch.testing.assert_close(out.trajectory[0], x_T)
    torch.testing.assert_close(out.trajectory[1], x1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.x0, den.predict(x1, t1), rtol=1e-12, atol=1e-12)
    # the first DPM-Solver++(2M) step is first order, i.e. this same DDIM step
    dpm = dpmpp_2m(den, x_T, timesteps=ts, return_trajectory=True)
    torch.testing.assert_close(dpm.trajectory[1], x1, rtol=1e-9, atol=1e-9)


def test_ddim_equals_euler_on_flow():
    # On rectified flow x_t is linear in t for fixed (x0, eps), so the DDIM step with constant
    # (x0, eps) and the Euler step with velocity eps - x0 land on the same point.
    den = exact_denoiser("flow")
    x_T = den.process.prior((64, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    ts = sampling_schedule(den.process, 12)
    torch.testing.assert_close(ddim(den, x_T, timesteps=ts).x0, euler(den, x_T, timesteps=ts).x0, rtol=1e-10, atol=1e-10)


def test_ddim_noise_scale():
    # eta = 1 is the DDPM posterior std: for VP (alpha^2 + sigma^2 = 1) with abar = alpha^2,
    # sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s) (Song et al. 2021, eq. 16).
    at, st, as_, ss = 0.6, 0.8, 0.8, 0.6
    expected = math.sqrt((1 - as_**2) / (1 - at**2)) * math.sqrt(1 - at**2 / as_**2)
    assert ddim_noise_scale(at, st, as_, ss, 1.0) == pytest.approx(expected)
    assert ddim_noise_scale(at, st, as_, ss, 0.0) == 0.0
    assert ddim_noise_scale(at, st, as_, ss, 0.5) == pytest.approx(0.5 * expected)


def test_ddim_eta1_keeps_marginal():
    # Ancestral sampling with the exact posterior mean (100 uniform steps on vp): same SW
    # tolerance as test (a). Measured over seeds 0-4: SW 0.05-0.09 vs tol 0.17-0.28.
    g = torch.Generator().manual_seed(5)
    den = exact_denoiser("vp")
    mix, n = den.net.mixture, 4000
    x_T = x_T_from_marginal(den.process, mix, n, g)
    ts = sampling_schedule(den.process, 100)
    out = ddim(den, x_T, timesteps=ts, eta=1.0, generator=torch.Generator().manual_seed(6))
    tol, baseline = sw_tolerance(mix, n, g, den.process, float(ts[-2]))
    err = sliced_w1(out.x0, mix.sample(n, g).x, seed=7)
    assert err < tol, f"SW {err:.4f} >= tol {tol:.4f} (baseline {baseline:.4f})"
    # reproducible given the generator, and actually stochastic
    again = ddim(den, x_T, timesteps=ts, eta=1.0, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(again.x0, out.x0)
    other = ddim(den, x_T, timesteps=ts, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(other.x0, out.x0)


# ---------------------------------------------------------------------------
# (d) DPM-Solver++(2M)
# ---------------------------------------------------------------------------


def test_dpmpp_2m_beats_euler_at_equal_nfe():
    # flow / uniform, error vs Heun-1024. Measured: at 16 NFE dpmpp_2m 3.4e-2 vs euler 1.4e-1,
    # at 32 NFE 1.1e-2 vs 7.3e-2; dpmpp ratio err(32)/err(64) ~ 3.2 (second order; the
    # exact 4 is approached slowly because the first steps from alpha = 0 have h = inf).
    g = torch.Generator().manual_seed(9)
    den = exact_denoiser("flow")
    x_T = den.process.prior((256, 2), generator=g, dtype=F64)
    ref = heun(den, x_T, timesteps=sampling_schedule(den.process, 1024)).x0
    e_dpm = _endpoint_errors(den, x_T, "uniform", dpmpp_2m, (16, 32, 64), ref)
    e_euler = _endpoint_errors(den, x_T, "uniform", euler, (16, 32), ref)
    assert e_dpm[0] < e_euler[0] / 2.5
    assert e_dpm[1] < e_euler[1] / 4
    assert e_dpm[1] / e_dpm[2] > 2.6  # faster than first order (2)


# ---------------------------------------------------------------------------
# (e) student samplers
# ---------------------------------------------------------------------------


def student():
    torch.manual_seed(0)
    process = make_process("flow")
    return Denoiser(MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16), process, prediction="x0")


def test_student_samplers_shapes_and_nfe():
    den = student()
    x_T = den.process.prior((16, 2), generator=torch.Generator().manual_seed(0))
    ts = sampling_schedule(den.process, 4)
    with torch.no_grad():
        one = onestep(den, x_T, timesteps=ts)
        torch.testing.assert_close(one.x0, den.predict(x_T, ts[0].float().expand(16)))
        assert one.nfe == 1 and one.x0.shape == (16, 2)
        ms = multistep(den, x_T, timesteps=ts, generator=torch.Generator().manual_seed(1), return_trajectory=True)
        assert ms.nfe == 4 and ms.x0.shape == (16, 2) and len(ms.trajectory) == 5
        cm = consistency(den, x_T, timesteps=ts, generator=torch.Generator().manual_seed(1))
        assert cm.nfe == 4
        # gamma = 1 (default) is multistep consistency sampling: identical draws, identical output
        torch.testing.assert_close(cm.x0, ms.x0)
        # gamma = 0 is deterministic DDIM (TCD, Zheng et al. 2024, Sec. 4.3)
        det = consistency(den, x_T, timesteps=ts, gamma=0.0)
        torch.testing.assert_close(det.x0, ddim(den, x_T, timesteps=ts).x0)
        mid = consistency(den, x_T, timesteps=ts, gamma=0.3, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(mid.x0).all() and mid.nfe == 4
        # the re-noised state at t_1 is alpha_1 x0 + sigma_1 z: check against the first prediction
        a1, s1 = float(den.process.alpha(ts[1])), float(den.process.sigma(ts[1]))
        z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(ms.trajectory[1], a1 * one.x0 + s1 * z)


def test_multistep_is_differentiable():
    den = student()
    x_T = den.process.prior((16, 2), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ts = sampling_schedule(den.process, 3)
    out = multistep(den, x_T, timesteps=ts, generator=torch.Generator().manual_seed(1))
    out.x0.square().mean().backward()
    grads = [p.grad for p in den.net.parameters()]
    assert all(gr is not None for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    assert x_T.grad is not None and float(x_T.grad.abs().sum()) > 0  # through the whole chain
    # sample() runs without a graph
    res = sample(den, x_T.detach(), sampler="multistep", steps=3, generator=torch.Generator().manual_seed(1))
    assert not res.x0.requires_grad
    torch.testing.assert_close(res.x0, out.x0.detach())


# ---------------------------------------------------------------------------
# (f) guidance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["heun", "ddim", "dpmpp_2m", "onestep", "multistep"])
def test_guidance_scale_one_is_conditional(name):
    mix = GaussianMixture.ring(4, 3.0, 0.4)
    process = make_process("vp")
    den = Denoiser(ExactClassX0(mix, process), process)
    g = torch.Generator().manual_seed(10)
    x_T = process.prior((32, 2), generator=g, dtype=F64)
    cond = torch.arange(32) % 4
    null = torch.full((32,), 4)
    ts = sampling_schedule(process, 6)
    fn = get_sampler(name)
    kw = lambda: {"timesteps": ts, "generator": torch.Generator().manual_seed(11)}  # noqa: E731
    plain = fn(den, x_T, cond, **kw())
    guided = fn(den, x_T, cond, guidance=1.0, null_cond=null, **kw())
    torch.testing.assert_close(guided.x0, plain.x0)
    uncond = fn(den, x_T, null, **kw())
    zero = fn(den, x_T, cond, guidance=0.0, null_cond=null, **kw())
    torch.testing.assert_close(zero.x0, uncond.x0)
    assert guided.nfe == plain.nfe
    if name == "onestep":  # w = 3: x_u + 3 (x_c - x_u), exactly
        three = fn(den, x_T, cond, guidance=3.0, null_cond=null, **kw())
        torch.testing.assert_close(three.x0, uncond.x0 + 3.0 * (plain.x0 - uncond.x0))


# ---------------------------------------------------------------------------
# registry, convenience, errors
# ---------------------------------------------------------------------------


def test_registry_and_errors():
    assert set(SAMPLERS) == {"euler", "heun", "ddim", "dpmpp_2m", "onestep", "multistep", "consistency"}
    assert get_sampler("heun") is heun and get_sampler(heun) is heun
    with pytest.raises(DistillError, match="(?i)did you mean 'heun'"):
        get_sampler("huen")
    den = exact_denoiser("flow")
    x_T = den.process.prior((4, 2))
    ts = sampling_schedule(den.process, 4)
    with pytest.raises(DistillError, match="did you mean 'eta'"):
        ddim(den, x_T, timesteps=ts, etta=0.5)
    with pytest.raises(DistillError, match="unknown option"):
        heun(den, x_T, timesteps=ts, eta=0.5)
    with pytest.raises(DistillError, match="strictly decreasing"):
        euler(den, x_T, timesteps=ts.flip(0))
    with pytest.raises(DistillError, match="steps"):
        euler(den, x_T, timesteps=ts[:1])
    with pytest.raises(DistillError, match="eta"):
        ddim(den, x_T, timesteps=ts, eta=2.0)


@pytest.mark.parametrize("name,nfe", [("euler", 5), ("heun", 9), ("ddim", 5), ("dpmpp_2m", 5), ("onestep", 1), ("multistep", 5), ("consistency", 5)])
def test_sample_convenience(name, nfe):
    den = exact_denoiser("vp")
    x_T = den.process.prior((8, 2), generator=torch.Generator().manual_seed(12))
    out = sample(den, x_T, sampler=name, steps=5, schedule="karras", generator=torch.Generator().manual_seed(0))
    assert isinstance(out, SampleResult) and out.nfe == nfe
    assert out.x0.shape == x_T.shape and out.x0.dtype == x_T.dtype and torch.isfinite(out.x0).all()
    with pytest.raises(DistillError, match="prior"):
        sample(den, 8, sampler=name)
