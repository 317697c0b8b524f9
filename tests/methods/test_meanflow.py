"""meanflow: the MeanFlow identity, its jvp direction, the adaptive weight and the jump sampler.

The oracle is the exact flow map of a Gaussian mixture: the exact teacher's velocity integrated
from t to r with Heun's method. Its average velocity satisfies the MeanFlow identity up to the
integrator's O(h^2) error, so the loss vanishes at second order in the substep.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.methods.meanflow import MeanFlow
from distill.nets.embeddings import with_extra_inputs
from distill.nets.mlp import MLPDenoiserNet
from distill.nets.unet import UNetDenoiserNet
from distill.process.mixture import GaussianMixture
from distill.samplers import heun
from distill import sampling_schedule
from tests.fixtures.exact import ExactNet

PROCESS = make_process("flow")
SPAN = PROCESS.t_max - PROCESS.t_min
MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.3)


def teacher() -> Denoiser:
    return Denoiser(ExactNet(MIXTURE, PROCESS), PROCESS, "x0").double()


class ExactFlowMap(nn.Module):
    """u(x_t, r, t) of the exact teacher: Heun from t down to r, ``substeps`` steps per call, or steps
    of ``1/per_span`` of the span (then chained jumps repeat the very same Heun steps)."""

    def __init__(self, substeps: int = 32, per_span: int | None = None, second_time: str = "interval"):
        super().__init__()
        self.teacher, self.substeps, self.per_span, self.second_time = teacher(), substeps, per_span, second_time

    def forward(self, x, t, cond=None, r=None):
        r_time = t - r * SPAN if self.second_time == "interval" else PROCESS.t_min + r * SPAN
        gap = t - r_time
        n = self.substeps if self.per_span is None else max(1, round(float(gap.max()) / SPAN * self.per_span))
        h = (-gap / n).view(-1, 1)
        y, s = x, t
        for _ in range(n):
            d = self.teacher.predict(y, s, target="flow")
            d2 = self.teacher.predict(y + h * d, s + h.view(-1), target="flow")
            y, s = y + h * (d + d2) / 2, s + h.view(-1)
        v = self.teacher.predict(x, t, target="flow")
        moved = (gap > 0).view(-1, 1)
        return torch.where(moved, (x - y) / gap.clamp_min(1e-12).view(-1, 1), v)


class Affine(nn.Module):
    """u = A x + b t + c q with q the second-time input: d/dt u along (v, 0, 1) is A v + b + c dq/dt."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def forward(self, x, t, cond=None, r=None):
        return x @ self.A.T + t[:, None] * self.b + r[:, None] * self.c


class Offset(nn.Module):
    """The teacher's velocity plus a constant: the flow-matching residual is that constant."""

    def __init__(self, delta: float):
        super().__init__()
        self.teacher, self.delta = teacher(), nn.Parameter(torch.tensor(delta, dtype=torch.float64))

    def forward(self, x, t, cond=None, r=None):
        return self.teacher.predict(x, t, target="flow") + self.delta


def data_batch(n: int = 64, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x0 = MIXTURE.sample(n, g).x.double()
    return Batch(noise=torch.zeros_like(x0), x0=x0, generator=torch.Generator().manual_seed(seed + 1))


def method_with(student: nn.Module, **options) -> tuple[MeanFlow, Roles]:
    method = MeanFlow(MeanFlow.Options(x0_source="data", **options))
    roles = Roles({"teacher": teacher(), "student": Denoiser(student, PROCESS, "flow")})
    method.setup(roles, modality=None)
    return method, roles


def test_exact_flow_map_satisfies_the_identity_at_second_order():
    # Heun's global error is O(h^2) in the substep h, so the residual of eq. 6 is too and the squared
    # loss falls 16-fold when the substeps double (measured: 10x at 8 -> 16 substeps, 14x at 32 -> 64,
    # 15x at 64 -> 128, so 32 -> 64 is in the asymptotic regime); the flow-matching half is exact.
    losses = []
    for substeps in (32, 64):
        method, roles = method_with(ExactFlowMap(substeps), weight_p=0.0, flow_fraction=0.5,
                                    time_sampler="uniform")
        losses.append(method.loss("student", data_batch(), roles))
    for out in losses:
        assert float(out.terms["mse_flow"]) < 1e-24
    coarse, fine = (float(out.terms["mse_mean"]) for out in losses)
    assert fine < 1e-6
    assert 16 / 1.5 < coarse / fine < 16 * 1.5, (coarse, fine)


@pytest.mark.parametrize("second_time", ["interval", "r"])
def test_total_derivative_is_the_jvp_along_v_0_1(second_time):
    method, roles = method_with(Affine(), second_time=second_time)
    net = roles.student.net
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.5 + 0.5
    r = t * torch.rand(8, generator=g, dtype=torch.float64)
    u, dudt = method.total_derivative(roles.student, x, r, t, v, None)
    # interval q = (t - r)/T grows with t at fixed r; q = (r - t_min)/T does not move.
    dq = 1 / SPAN if second_time == "interval" else 0.0
    expected = v @ net.A.T + net.b + dq * net.c
    assert torch.allclose(dudt, expected.expand_as(dudt), atol=1e-12)
    q = (t - r) / SPAN if second_time == "interval" else (r - PROCESS.t_min) / SPAN
    assert torch.allclose(u, x @ net.A.T + t[:, None] * net.b + q[:, None] * net.c, atol=1e-12)


def test_loss_is_the_stop_gradient_regression_of_eq_10():
    method, roles = method_with(Affine(), weight_p=0.0, flow_fraction=0.25, time_sampler="uniform")
    net, batch = roles.student.net, data_batch(16)
    out = method.loss("student", batch, roles)
    # Replay the method's draws from the same seed and evaluate eq. 9-10 by hand.
    again = data_batch(16)
    r, t = method.times(again, 16)
    x_t = PROCESS.add_noise(again.x0, again.randn_like(again.x0), t)
    v = roles.teacher.predict(x_t, t, target="flow")
    q = (t - r) / SPAN
    u = x_t @ net.A.T + t[:, None] * net.b + q[:, None] * net.c
    target = (v - (t - r)[:, None] * (v @ net.A.T + net.b + net.c / SPAN)).detach()
    assert torch.equal(r[:4], t[:4]) and bool((r[4:] < t[4:]).all())
    expected = (u - target).pow(2).mean()
    assert torch.allclose(out.total, expected, rtol=1e-10)
    # The target is stop-gradient'ed: the gradient is that of a regression onto a constant.
    out.total.backward()
    grad_b = (2 * (u - target) * t[:, None]).mean(0) / 2
    assert torch.allclose(net.b.grad, grad_b.detach(), rtol=1e-8)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_adaptive_weight_of_sec_4_3(p):
    delta, c = 0.3, 1e-3
    method, roles = method_with(Offset(delta), weight_p=p, weight_c=c, flow_fraction=1.0)
    out = method.loss("student", data_batch(), roles)
    norm2 = 2 * delta**2  # ||Delta||^2 of a 2-D sample, identical for every sample
    expected = norm2 / (norm2 + c) ** p / 2
    assert float(out.total.detach()) == pytest.approx(expected, rel=1e-10)
    assert float(out.terms["mse"]) == pytest.approx(delta**2, rel=1e-10)


def test_jump_sampler_follows_the_teacher_ode():
    # With steps of 1/64 of the span the oracle repeats the same Heun steps however the interval is
    # chained, so 1, 2 and 4 jumps agree to rounding, and all land on the teacher's ODE solution.
    method, roles = method_with(ExactFlowMap(per_span=64))
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        samples = {k: method.sample(roles.student, noise, steps=k) for k in (1, 2, 4)}
        reference = heun(roles.teacher, noise, timesteps=sampling_schedule(PROCESS, 64)).x0
    assert [samples[k].nfe for k in (1, 2, 4)] == [1, 2, 4]
    assert torch.allclose(samples[1].x0, samples[2].x0, atol=1e-10)
    assert torch.allclose(samples[1].x0, samples[4].x0, atol=1e-10)
    # heun ends with the denoised x0 at t_1, the jumps at x_{t_min}: they differ by O(t_min |v|).
    assert (samples[1].x0 - reference).abs().max() < 10 * PROCESS.t_min


class _NoJvp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class NoForwardAD(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x, t, cond=None, r=None):
        return _NoJvp.apply(x * self.scale) * t[:, None]


def test_network_without_forward_ad_fails_with_a_clear_error():
    method, roles = method_with(NoForwardAD(), flow_fraction=0.5)
    with pytest.raises(DistillError, match="forward-mode differentiation"):
        method.loss("student", data_batch(8), roles)


class AttentionProbe(nn.Module):
    """Records which attention kernels are enabled when the network runs."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x, t, cond=None, r=None):
        self.seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()))
        return self.weight * x * t[:, None]


def test_jvp_runs_attention_on_the_math_backend():
    # The fused CUDA kernels have no forward-mode derivative; inside the jvp only the math one is on.
    probe = AttentionProbe()
    method, roles = method_with(probe, flow_fraction=0.5)
    method.loss("student", data_batch(8), roles)
    assert probe.seen == [(True, True), (False, False)]  # the r = t forward, then the jvp


def _perturbed(net: nn.Module) -> nn.Module:
    """Random weights everywhere (zero-initialised output layers would make every derivative 0)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=g, dtype=param.dtype))
    return net


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_jvp_through_reference_networks_matches_finite_differences(kind):
    # GroupNorm, attention (scaled_dot_product_attention), FiLM and the extra-input embeddings all
    # support forward-mode AD. Central differences in float64 have error O(eps^2 f''') + O(1e-16/eps).
    if kind == "mlp":
        base, x = MLPDenoiserNet(dim=2, time_scale=10.0), torch.randn(4, 2, dtype=torch.float64)
        cond = None
    else:
        base = UNetDenoiserNet(in_channels=1, resolution=8, base_channels=16, channel_mults=(1, 2),
                               attention_resolutions=(4,), num_classes=3, time_dim=32, time_scale=10.0, head_channels=16)
        x, cond = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    net = _perturbed(with_extra_inputs(base, ("r",)).double())
    method = MeanFlow(MeanFlow.Options(x0_source="data"))
    student = Denoiser(net, PROCESS, "x0")  # an x0-predicting student: u goes through the conversion too
    method.process = PROCESS
    g = torch.Generator().manual_seed(2)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = torch.full((x.shape[0],), 0.7, dtype=torch.float64)
    r = torch.full((x.shape[0],), 0.2, dtype=torch.float64)
    _, dudt = method.total_derivative(student, x, r, t, v, cond)
    eps = 1e-5
    with torch.no_grad():
        plus = method.average_velocity(student, x + eps * v, r, t + eps, cond)
        minus = method.average_velocity(student, x - eps * v, r, t - eps, cond)
    assert torch.allclose(dudt, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_teacher_sample_cache_feeds_the_loss():
    class Plane:
        sample_shape = (2,)

        def sample_condition(self, n, generator=None):
            return None

    method = MeanFlow(MeanFlow.Options(cache_size=48, cache_batch=16, teacher_steps=4))
    assert not method.needs_data
    roles = Roles({"teacher": teacher(), "student": Denoiser(Offset(0.0), PROCESS, "flow")})
    method.setup(roles, Plane())
    cache = method.points.cache
    assert cache.x0.shape == (48, 2)
    again = heun(roles.teacher, cache.noise[:5].double(), timesteps=sampling_schedule(PROCESS, 4)).x0
    assert torch.allclose(cache.x0[:5].double(), again, atol=1e-6)
    batch = Batch(noise=torch.zeros(8, 2, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert float(method.loss("student", batch, roles).terms["mse_flow"]) < 1e-20


def test_roles_and_options():
    method = MeanFlow()
    (student,) = method.roles()
    assert student.extra_inputs == ("r",) and student.prediction == "flow"
    assert MeanFlow(MeanFlow.Options(x0_source="data")).needs_data
    for bad in ({"flow_fraction": 1.5}, {"second_time": "t"}, {"x0_source": "noise"}, {"weight_c": 0.0}):
        with pytest.raises(DistillError):
            MeanFlow(MeanFlow.Options(**bad))
