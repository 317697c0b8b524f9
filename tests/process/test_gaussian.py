"""Gaussian processes: schedules, derivatives, SNR inverse, conversions, builders."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.errors import DistillError
from distill.process import (
    EDM,
    GAUSSIAN_PROCESSES,
    PREDICTIONS,
    Flow,
    GaussianProcess,
    Trig,
    VPCosine,
    VPDiscrete,
    VPLinear,
    expand_like,
    make_betas,
    make_process,
)

SETTINGS = settings(max_examples=50, deadline=None)
F64 = torch.float64

PROCESSES = [
    VPCosine(),
    VPLinear(),
    VPDiscrete.from_betas("linear"),
    VPDiscrete.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012),
    VPDiscrete.from_betas("squaredcos_cap_v2"),
    EDM(),
    Flow(),
    Trig(),
]
IDS = [p.name + (f"-{p.describe()['schedule']}" if isinstance(p, VPDiscrete) else "") for p in PROCESSES]
each_process = pytest.mark.parametrize("p", PROCESSES, ids=IDS)


def well_conditioned(p: GaussianProcess) -> tuple[float, float]:
    """The part of [t_min, t_max] with 1e-6 <= snr <= 1e6, i.e. alpha/sigma and sigma/alpha <= 1e3.

    Conversions divide by alpha (to x0) or sigma (to eps/score): at the pure-noise end of flow/trig
    alpha = 0 and x0 is undefined, so round trips are only meaningful where both are >= ~1e-3 of the
    other. There float64 rounding (1e-16) amplified by <= 1e3 x |x_t| stays far below 1e-8.
    """
    lo = max(p.t_min, float(p.t_at_snr(torch.tensor(1e6, dtype=F64))))
    hi = min(p.t_max, float(p.t_at_snr(torch.tensor(1e-6, dtype=F64))))
    return lo, hi


def times(p: GaussianProcess, us: list[float]) -> torch.Tensor:
    lo, hi = well_conditioned(p)
    return lo + torch.tensor(us, dtype=F64) * (hi - lo)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-8) -> None:
    """|a - b| <= rtol (|b| + max(1, max|b|)), elementwise (a cheap assert_close)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    err = (a - b).abs() - rtol * (b.abs() + b.abs().max().clamp(min=1))
    assert bool((err <= 0).all()), f"max excess {float(err.max()):.3g}\n{a}\n{b}"


unit = st.floats(0.0, 1.0)
us = st.lists(unit, min_size=3, max_size=3)
many_us = st.lists(unit, min_size=16, max_size=16)
seeds = st.integers(0, 2**31 - 1)


def data(seed: int, shape=(3, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)


# -- conversions ------------------------------------------------------------------------------
@each_process
@settings(max_examples=15, deadline=None)
@given(us=many_us, seed=seeds)
def test_round_trip_every_pair(p, us, seed):
    t = times(p, us)
    x0, eps = data(seed, (16, 5))
    x_t = p.add_noise(x0, eps, t)
    for source in PREDICTIONS:
        pred = p.from_x0_eps(x0, eps, t, source)
        for target in PREDICTIONS:
            out = p.convert(pred, x_t, t, source, target)
            close(out, p.from_x0_eps(x0, eps, t, target))  # matches the truth
            close(p.convert(out, x_t, t, target, source), pred)  # and comes back


@each_process
@SETTINGS
@given(us=us, seed=seeds)
def test_to_x0_eps_recovers_x0_and_eps(p, us, seed):
    t = times(p, us)
    x0, eps = data(seed)
    x_t = p.add_noise(x0, eps, t)
    for source in PREDICTIONS:
        got_x0, got_eps = p.to_x0_eps(p.from_x0_eps(x0, eps, t, source), x_t, t, source)
        assert got_x0.dtype == got_eps.dtype == F64
        close(got_x0, x0)
        close(got_eps, eps)


@each_process
def test_convert_keeps_dtype_and_broadcasts_images(p):
    t = times(p, [0.2, 0.5, 0.8]).float()
    x0, eps = (v.float() for v in data(0, (3, 2, 4, 4)))
    x_t = p.add_noise(x0, eps, t)
    assert x_t.dtype == torch.float32 and x_t.shape == x0.shape
    for target in PREDICTIONS:
        out = p.convert(eps, x_t, t, "eps", target)
        assert out.dtype == torch.float32 and out.shape == x0.shape
    torch.testing.assert_close(p.convert(eps, x_t, t, "eps", "x0"), x0, rtol=1e-3, atol=1e-3)


@SETTINGS
@given(us=us, seed=seeds)
def test_flow_closed_forms(us, seed):
    p = Flow()
    t = times(p, us)
    x0, eps = data(seed)
    x_t, u = p.add_noise(x0, eps, t), eps - x0
    close(p.from_x0_eps(x0, eps, t, "flow"), u)
    close(p.convert(u, x_t, t, "flow", "x0"), x_t - t[:, None] * u)


@SETTINGS
@given(us=us, seed=seeds)
def test_edm_closed_forms(us, seed):
    p = EDM()
    t = times(p, us)
    x0, eps = data(seed)
    x_t = x0 + t[:, None] * eps
    close(p.convert(eps, x_t, t, "eps", "x0"), x_t - t[:, None] * eps)
    close(p.convert(x0, x_t, t, "x0", "flow"), (x_t - x0) / t[:, None])  # EDM ODE: dx/dsigma = (x - D)/sigma


@SETTINGS
@given(us=us, seed=seeds)
def test_vp_cosine_and_trig_v(us, seed):
    x0, eps = data(seed)
    for p, scale in ((VPCosine(), math.pi / 2), (Trig(), 1.0)):
        t = times(p, us)
        a, s = (f(t)[:, None] for f in (p.alpha, p.sigma))
        v = a * eps - s * x0
        close(p.from_x0_eps(x0, eps, t, "v"), v)
        close(p.from_x0_eps(x0, eps, t, "flow"), scale * v)  # flow = dx_t/dt = dphi/dt * v


@SETTINGS
@given(us=us, seed=seeds)
def test_vp_linear_flow_is_probability_flow_ode(us, seed):
    """Song et al. 2021 eq. 13 for the VP-SDE: dx/dt = -beta(t)/2 (x + score)."""
    p = VPLinear()
    t = times(p, us)
    x0, eps = data(seed)
    x_t = p.add_noise(x0, eps, t)
    beta = (p.beta_min + t * (p.beta_max - p.beta_min))[:, None]
    score = p.from_x0_eps(x0, eps, t, "score")
    close(p.from_x0_eps(x0, eps, t, "flow"), -0.5 * beta * (x_t + score))


def test_vp_discrete_ddpm_eps_to_x0_at_integer_steps():
    """Ho et al. 2020, eq. 4 solved for x0: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    p = VPDiscrete.from_betas("linear")
    i = torch.tensor([0, 10, 500, 999])
    abar = p.alphas_cumprod[i][:, None]
    x0, eps = data(1, (4, 3))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    close(p.convert(eps, x_t, p.t_of_index(i), "eps", "x0"), (x_t - (1 - abar).sqrt() * eps) / abar.sqrt())


@each_process
@SETTINGS
@given(us=us, seed=seeds)
def test_score_is_minus_eps_over_sigma(p, us, seed):
    t = times(p, us)
    x0, eps = data(seed)
    close(p.from_x0_eps(x0, eps, t, "score"), -eps / p.sigma(t)[:, None])


def test_unknown_prediction_names_the_choices():
    p, x = Flow(), torch.zeros(2, 3)
    with pytest.raises(DistillError, match="did you mean 'eps'.*known: eps, flow, score, v, x0"):
        p.convert(x, x, torch.full((2,), 0.5), "epsilon", "x0")
    with pytest.raises(DistillError, match="unknown prediction type 'velocity'"):
        p.convert(x, x, torch.full((2,), 0.5), "x0", "velocity")


# -- schedule ---------------------------------------------------------------------------------
@each_process
@SETTINGS
@given(us=st.lists(unit, min_size=1, max_size=8))
def test_closed_form_derivatives_match_autograd(p, us):
    t = p.t_min + torch.tensor(us, dtype=F64) * (p.t_max - p.t_min)
    close(p.d_alpha(t), GaussianProcess.d_alpha(p, t), rtol=1e-10)
    close(p.d_sigma(t), GaussianProcess.d_sigma(p, t), rtol=1e-10)
    assert p.d_alpha(t.float()).dtype == torch.float32


@each_process
@SETTINGS
@given(u=st.floats(0.05, 0.95), seed=seeds)
def test_flow_is_finite_difference_of_x_t(p, u, seed):
    if isinstance(p, VPDiscrete):  # stay inside one linear segment of the log-SNR
        i = int(u * (p.T - 2))
        t = float(p.t_of_index(i + 0.05 + 0.9 * (u * (p.T - 2) - i)))
    else:
        t = p.t_min + u * (p.t_max - p.t_min)
    x0, eps = data(seed, (1, 4))
    h = 1e-6
    fd = (p.add_noise(x0, eps, torch.tensor([t + h], dtype=F64)) - p.add_noise(x0, eps, torch.tensor([t - h], dtype=F64))) / (2 * h)
    close(p.from_x0_eps(x0, eps, torch.tensor([t], dtype=F64), "flow"), fd, rtol=1e-6)


@each_process
@SETTINGS
@given(v=st.lists(unit, min_size=1, max_size=8))
def test_t_at_snr_inverts_snr(p, v):
    """log_snr(t_at_snr(exp(l))) == l over the process's log-SNR range, kept to |l| <= 20."""
    lo = max(float(p.log_snr(torch.tensor(p.t_max, dtype=F64))), -20.0)
    hi = min(float(p.log_snr(torch.tensor(p.t_min, dtype=F64))), 20.0)
    lam = lo + torch.tensor(v, dtype=F64) * (hi - lo)
    t = p.t_at_snr(torch.exp(lam))
    assert t.dtype == F64
    torch.testing.assert_close(p.log_snr(t), lam, rtol=0, atol=1e-8)
    torch.testing.assert_close(p.snr(t), torch.exp(lam), rtol=1e-8, atol=0)
    torch.testing.assert_close(GaussianProcess.t_at_snr(p, torch.exp(lam)), t, rtol=1e-9, atol=1e-12)


@each_process
def test_schedule_shapes_and_ends(p):
    t = torch.linspace(p.t_min, p.t_max, 101, dtype=F64)
    a, s = p.alpha(t), p.sigma(t)
    assert bool((s > 0).all()) and bool((a[:-1] > 0).all()) and bool((a >= -1e-15).all())
    assert bool((p.log_snr(t)[1:] < p.log_snr(t)[:-1]).all())
    if not isinstance(p, (EDM, Flow)):  # variance preserving
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-12)
    assert p.alpha(t.float()).dtype == torch.float32
    assert p.alpha(0.5).dtype == torch.float32  # python floats follow torch's default dtype


@each_process
@SETTINGS
@given(seed=seeds)
def test_add_noise_broadcasts(p, seed):
    x0, eps = data(seed, (3, 2, 4))
    t = times(p, [0.1, 0.5, 0.9])
    expected = p.alpha(t)[:, None, None] * x0 + p.sigma(t)[:, None, None] * eps
    close(p.add_noise(x0, eps, t), expected)
    scalar = t[1]
    close(p.add_noise(x0, eps, scalar), p.alpha(scalar) * x0 + p.sigma(scalar) * eps)
    assert p.add_noise(x0.float(), eps.float(), t).dtype == torch.float32


def test_expand_like():
    x = torch.zeros(3, 2, 5)
    assert expand_like(torch.arange(3.0), x).shape == (3, 1, 1)
    assert expand_like(torch.tensor(2.0), x).shape == ()


@each_process
def test_prior_scale(p):
    x = p.prior((20000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    s = float(p.sigma(torch.tensor(p.t_max, dtype=F64)))
    assert x.shape == (20000, 2) and x.dtype == F64
    assert abs(float(x.std()) / s - 1) < 5 / math.sqrt(2 * x.numel())


# -- VPDiscrete -------------------------------------------------------------------------------
def _betas_by_definition(schedule: str, T: int, b0: float, b1: float) -> list[float]:
    if schedule == "linear":
        return [b0 + (b1 - b0) * i / (T - 1) for i in range(T)]
    if schedule == "scaled_linear":
        return [(b0**0.5 + (b1**0.5 - b0**0.5) * i / (T - 1)) ** 2 for i in range(T)]

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("T", [1000, 50])
def test_beta_schedules_match_definitions(schedule, T):
    b0, b1 = (0.00085, 0.012) if schedule == "scaled_linear" else (1e-4, 0.02)
    betas = make_betas(schedule, T, b0, b1)
    assert betas.dtype == torch.float32 and betas.shape == (T,)
    torch.testing.assert_close(betas.double(), torch.tensor(_betas_by_definition(schedule, T, b0, b1), dtype=F64), rtol=1e-6, atol=1e-9)
    p = VPDiscrete.from_betas(schedule, T, b0, b1)
    abar = torch.cumprod(1.0 - betas, dim=0).double()
    assert torch.equal(p.alphas_cumprod, abar)
    i = torch.arange(T)
    torch.testing.assert_close(p.alpha(p.t_of_index(i)) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.sigma(p.t_of_index(i)) ** 2, 1 - abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.index(p.t_of_index(i)), i.double())


def test_ddpm_linear_reference_value():
    """The well-known DDPM linear schedule ends at alphas_cumprod[999] ~= 4.04e-5."""
    p = VPDiscrete.from_betas("linear")
    assert abs(float(p.alphas_cumprod[-1]) - 4.04e-5) < 1e-7


def test_vp_discrete_interpolates_log_snr_linearly():
    p = VPDiscrete.from_betas("linear", T=10)
    lam = torch.log(p.alphas_cumprod / (1 - p.alphas_cumprod))
    t = p.t_of_index(torch.tensor(3.25, dtype=F64))
    torch.testing.assert_close(p.log_snr(t), 0.75 * lam[3] + 0.25 * lam[4])


def test_vp_discrete_rejects_bad_values():
    with pytest.raises(DistillError, match="strictly decreasing"):
        VPDiscrete([0.5, 0.9])
    with pytest.raises(DistillError, match="not both"):
        VPDiscrete([0.9, 0.5], schedule="linear")
    with pytest.raises(DistillError, match="did you mean 'scaled_linear'"):
        VPDiscrete.from_betas("scaledlinear")


# -- builders ---------------------------------------------------------------------------------
@each_process
def test_describe_round_trips_through_json(p):
    d = json.loads(json.dumps(p.describe()))
    q = make_process(**d)
    assert type(q) is type(p) and q.describe() == p.describe()
    t = torch.linspace(p.t_min, p.t_max, 33, dtype=F64)
    assert torch.equal(q.alpha(t), p.alpha(t)) and torch.equal(q.sigma(t), p.sigma(t))


def test_describe_raw_alphas_cumprod():
    ac = torch.cumprod(1 - torch.linspace(1e-3, 0.05, 20, dtype=F64), 0)
    p = VPDiscrete(ac)
    d = json.loads(json.dumps(p.describe()))
    assert set(d) == {"name", "alphas_cumprod"}
    assert torch.equal(make_process(**d).alphas_cumprod, ac)


def test_make_process_names_and_arguments():
    assert set(GAUSSIAN_PROCESSES) == {"vp", "vp_linear", "vp_discrete", "edm", "flow", "trig"}
    assert make_process("edm", sigma_max=10.0).t_max == 10.0
    assert isinstance(make_process("vp_discrete"), VPDiscrete)
    with pytest.raises(DistillError, match=r"unknown process 'flwo'; did you mean 'flow'\? known: edm, flow"):
        make_process("flwo")
    with pytest.raises(DistillError, match="has no argument 'sigma_mx'; did you mean 'sigma_max'"):
        make_process("edm", sigma_mx=3.0)
    with pytest.raises(DistillError, match="t_min < t_max"):
        Flow(t_min=0.5, t_max=0.1)
    with pytest.raises(DistillError, match="raise t_min"):
        Flow(t_min=0.0)
