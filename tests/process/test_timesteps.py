"""Training time samplers (range, distribution) and sampling schedules (order, ends, spacing)."""
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
    LOGSNR_FLOOR,
    Flow,
    LogitNormalTime,
    LogNormalTime,
    ShiftedTime,
    Trig,
    UniformTime,
    VPCosine,
    VPDiscrete,
    VPLinear,
    make_time_sampler,
    sampling_schedule,
)

F64 = torch.float64
N = 20000
PROCESSES = [VPCosine(), VPLinear(), VPDiscrete.from_betas("linear", T=100), EDM(), Flow(), Trig()]
each_process = pytest.mark.parametrize("p", PROCESSES, ids=[p.name for p in PROCESSES])
SAMPLERS = [UniformTime(), LogNormalTime(), LogitNormalTime(0.5, 0.8), ShiftedTime(shift=3.0), ShiftedTime("logit_normal", 0.5)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within(x: torch.Tensor, mean: float, sd: float) -> None:
    """The sample mean of x is within 5 standard errors of ``mean`` (sd: population std)."""
    se = sd / math.sqrt(x.numel())
    assert abs(float(x.mean()) - mean) < 5 * se, (float(x.mean()), mean, se)


# -- training samplers ------------------------------------------------------------------------
@each_process
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: json.dumps(s.describe()))
def test_samplers_stay_in_range(p, sampler):
    t = sampler(N, p, generator=gen())
    assert t.shape == (N,) and t.dtype == torch.float32
    assert bool((t.double() >= p.t_min).all() and (t.double() <= p.t_max).all())
    assert torch.equal(t, sampler(N, p, generator=gen()))  # the generator fixes the draw


def test_uniform_distribution():
    p = EDM()
    u = (UniformTime()(N, p, generator=gen()).double() - p.t_min) / (p.t_max - p.t_min)
    within(u, 0.5, math.sqrt(1 / 12))
    within((u < 0.25).double(), 0.25, math.sqrt(0.25 * 0.75))


def test_logit_normal_distribution():
    """SD3: logit(u) ~ N(mean, std^2) (VPDiscrete has t in [0, 1], so u = t)."""
    t = LogitNormalTime(0.5, 0.8)(N, VPDiscrete.from_betas(T=100), generator=gen()).double()
    z = torch.logit(t)
    within(z, 0.5, 0.8)
    within((z - 0.5) ** 2, 0.8**2, 0.8**2 * math.sqrt(2))  # variance: Var((z-m)^2) = 2 sd^4


@pytest.mark.parametrize("p", [EDM(), Flow()], ids=["edm", "flow"])
def test_lognormal_distribution(p):
    """EDM: ln(sigma/alpha) ~ N(P_mean, P_std^2); clamping touches < 1e-5 of the mass here."""
    t = LogNormalTime(-1.2, 1.2)(N, p, generator=gen()).double()
    z = torch.log(p.sigma(t) / p.alpha(t))
    within(z, -1.2, 1.2)
    within((z + 1.2) ** 2, 1.44, 1.44 * math.sqrt(2))


@pytest.mark.parametrize("shift", [0.3, 1.0, 3.0])
def test_shifted_distribution(shift):
    """Undoing u' = s u / (1 + (s-1) u), i.e. u = u' / (s - (s-1) u'), gives back U[0, 1]."""
    p = Flow()
    up = (ShiftedTime(shift=shift)(N, p, generator=gen(1)).double() - p.t_min) / (p.t_max - p.t_min)
    u = up / (shift - (shift - 1) * up)
    within(u, 0.5, math.sqrt(1 / 12))
    base = (UniformTime()(N, p, generator=gen(1)).double() - p.t_min) / (p.t_max - p.t_min)
    torch.testing.assert_close(u, base, rtol=0, atol=1e-6)  # same draws, shifted (float32 times)
    if shift > 1:
        assert float(up.mean()) > 0.5  # mass moves towards noise


def test_make_time_sampler_and_describe():
    for s in SAMPLERS:
        assert make_time_sampler(**json.loads(json.dumps(s.describe()))) == s
    assert make_time_sampler("shifted", base={"name": "lognormal", "p_std": 2.0}).base == LogNormalTime(p_std=2.0)
    with pytest.raises(DistillError, match="unknown time sampler 'logitnormal'; did you mean 'logit_normal'"):
        make_time_sampler("logitnormal")
    with pytest.raises(DistillError, match="has no argument 'sigma'"):
        make_time_sampler("lognormal", sigma=1.0)
    with pytest.raises(DistillError, match="shift must be > 0"):
        ShiftedTime(shift=0.0)


# -- sampling schedules -----------------------------------------------------------------------
@each_process
@pytest.mark.parametrize("kind", ["uniform", "karras", "logsnr"])
@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 60))
def test_schedule_decreasing_with_exact_ends(p, kind, steps):
    t = sampling_schedule(p, steps, kind)
    assert t.dtype == F64 and t.shape == (steps + 1,)
    assert float(t[0]) == p.t_max and float(t[-1]) == p.t_min
    assert bool((t[1:] < t[:-1]).all())


@each_process
@pytest.mark.parametrize("steps", [1, 4, 18])
def test_schedule_spacing(p, steps):
    lam_lo = max(float(p.log_snr(torch.tensor(p.t_max, dtype=F64))), LOGSNR_FLOOR)
    lam_hi = float(p.log_snr(torch.tensor(p.t_min, dtype=F64)))
    inner = slice(1, steps)
    # uniform: linear in t
    torch.testing.assert_close(sampling_schedule(p, steps), torch.linspace(p.t_max, p.t_min, steps + 1, dtype=F64))
    # logsnr: uniform in log-SNR
    t = sampling_schedule(p, steps, "logsnr")
    torch.testing.assert_close(p.log_snr(t[inner]), torch.linspace(lam_lo, lam_hi, steps + 1, dtype=F64)[inner], rtol=0, atol=1e-8)
    # karras: EDM eq. 5 on sigma/alpha
    t = sampling_schedule(p, steps, "karras", rho=7.0)
    s_max, s_min = math.exp(-lam_lo / 2), math.exp(-lam_hi / 2)
    i = torch.arange(steps + 1, dtype=F64) / steps
    ratio = (s_max ** (1 / 7) + i * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    torch.testing.assert_close((p.sigma(t) / p.alpha(t))[inner], ratio[inner], rtol=1e-8, atol=0)


def test_karras_on_edm_is_eq5_exactly():
    t = sampling_schedule(EDM(), 18, "karras")
    i = torch.arange(19, dtype=F64) / 18
    expected = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(t, expected, rtol=1e-12, atol=0)


def test_schedule_errors():
    with pytest.raises(DistillError, match="did you mean 'karras'"):
        sampling_schedule(Flow(), 4, "karas")
    with pytest.raises(DistillError, match="steps >= 1"):
        sampling_schedule(Flow(), 0)
