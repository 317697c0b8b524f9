"""scm: the TrigFlow <-> process map, the tangent df/dt (JVP and finite difference), the
tangent target and loss, time sampling and the consistency sampler, against closed forms.

Oracles: the exact mixture teacher (its x0 prediction is E[x0 | x_t] under any process, so
the SNR map can be checked against the mixture posterior written directly in TrigFlow), and
the exact consistency function of a single Gaussian, f(x_t) = mu + s (x_t - a mu) / sqrt(a^2
s^2 + sigma^2), which is constant along the teacher's PF-ODE, so its tangent is exactly 0.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.methods import BUILTIN_METHODS
from distill.methods.scm import SCM, AdaptiveWeighting, tangent_weighting, trig_map, trig_time, warmup_factor, x0_eps
from distill.nets.mlp import MLPDenoiserNet
from distill.process import VPDiscrete
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet

F64 = torch.float64
SIGMA_D = 0.8
PROCESSES = ["flow", "vp", "vp_linear", "edm", "trig"]


def process_named(name):
    return VPDiscrete.from_betas("linear") if name == "vp_discrete" else make_process(name)


def mixture():
    return GaussianMixture(torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -1.2]], dtype=F64),
                           torch.tensor([0.2, 0.3, 0.25], dtype=F64), torch.tensor([0.5, 0.3, 0.2], dtype=F64))


class GaussianCM(nn.Module):
    """The exact consistency function of N(mu, std^2 I) as an x0-predicting network (one parameter).

    ``scale`` multiplies the output, so the loss has a gradient to check; at 1 it is exact.
    """

    def __init__(self, mu, std, process):
        super().__init__()
        self.mu, self.std, self.process = mu, std, process
        self.scale = nn.Parameter(torch.ones((), dtype=F64))

    def forward(self, x, t, cond=None, **extra):
        a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        return self.scale * (self.mu + self.std * (x - a * self.mu) / torch.sqrt(a * a * self.std**2 + s * s))


def trig_points(method, n=9, seed=0, data=None):
    """x_t = cos t x0 + sigma_d sin t eps at n TrigFlow times strictly inside the range."""
    lo, hi = method.time_range()
    t = torch.linspace(lo + 1e-2, hi - 1e-2, n, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    x0 = (data or mixture()).sample(n, gen).x.to(F64)
    eps = torch.randn(n, 2, generator=gen, dtype=F64)
    sd = method.options.sigma_d
    return t, torch.cos(t)[:, None] * x0 + sd * torch.sin(t)[:, None] * eps, x0, eps


def setup_method(process, **options):
    method = SCM(SCM.Options(sigma_d=SIGMA_D, adaptive_weighting=False, **options))
    method.process = process
    return method


# --- the SNR map ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROCESSES + ["vp_discrete"])
def test_trig_map_turns_trigflow_noising_into_the_process_noising(name):
    process = process_named(name)
    method = setup_method(process)
    t, x_t, x0, eps = trig_points(method)
    m = trig_map(process, t, SIGMA_D)
    # x_s = c x_t must be alpha(s) x0 + sigma(s) eps with the *same* eps: float64 round-off only.
    expected = process.add_noise(x0, eps, m.s)
    assert torch.allclose(m.c[:, None] * x_t, expected, atol=1e-10, rtol=1e-10)
    assert torch.allclose(trig_time(process, m.s, SIGMA_D), t, atol=1e-10)


@pytest.mark.parametrize("name", PROCESSES)
def test_trig_map_rates_are_the_time_derivatives(name):
    process = make_process(name)
    method = setup_method(process)
    t = trig_points(method)[0]
    h = 1e-6  # central difference: error h^2 |s'''| / 6 ~ 1e-12 against round-off 1e-16 / h = 1e-10
    plus, minus, m = trig_map(process, t + h, SIGMA_D), trig_map(process, t - h, SIGMA_D), trig_map(process, t, SIGMA_D)
    assert torch.allclose(m.ds, (plus.s - minus.s) / (2 * h), rtol=1e-6, atol=1e-8)
    assert torch.allclose(m.dc, (plus.c - minus.c) / (2 * h), rtol=1e-6, atol=1e-8)


def test_flow_map_closed_form():
    # flow: s = sigma_d sin t / (sigma_d sin t + cos t), c = 1 / (sigma_d sin t + cos t)
    t = torch.linspace(0.01, math.pi / 2, 7, dtype=F64)
    m = trig_map(make_process("flow"), t, SIGMA_D)
    den = SIGMA_D * torch.sin(t) + torch.cos(t)
    assert torch.allclose(m.s, SIGMA_D * torch.sin(t) / den, atol=1e-12)
    assert torch.allclose(m.c, 1 / den, atol=1e-12)
    assert torch.allclose(m.ds, SIGMA_D / den**2, atol=1e-12)


@pytest.mark.parametrize("name", PROCESSES)
def test_teacher_velocity_is_the_trigflow_velocity_of_the_mixture(name):
    """The exact teacher under any process gives TrigFlow's dx_t/dt = (cos t x_t - E[x0|x_t]) / sin t."""
    process = make_process(name)
    mix = mixture()
    teacher = Denoiser(ExactNet(mix, process), process, "x0")
    method = setup_method(process)
    t, x_t, _, _ = trig_points(method)
    m = trig_map(process, t, SIGMA_D)
    dxdt = method.velocity(*x0_eps(teacher, m.c[:, None] * x_t, m.s), t)
    posterior = mix.posterior_mean(x_t, torch.cos(t), SIGMA_D * torch.sin(t))  # TrigFlow's own x0 oracle
    expected = (torch.cos(t)[:, None] * x_t - posterior) / torch.sin(t)[:, None]
    assert torch.allclose(dxdt, expected, atol=1e-9, rtol=1e-9)


# --- the tangent --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("tangent", ["jvp", "finite_difference"])
def test_tangent_of_an_exact_consistency_function_is_zero(name, tangent):
    process = make_process(name)
    mu, std = torch.tensor([1.0, -0.5], dtype=F64), 0.7
    data = GaussianMixture(mu[None], torch.tensor([std], dtype=F64))
    teacher = Denoiser(ExactNet(data, process), process, "x0")
    student = Denoiser(GaussianCM(mu, std, process), process, "x0")
    method = setup_method(process, tangent=tangent)
    t, x_t, _, _ = trig_points(method, data=data)
    m = trig_map(process, t, SIGMA_D)
    dxdt = method.velocity(*x0_eps(teacher, m.c[:, None] * x_t, m.s), t)
    dfdt = method.tangent(student, x_t, t, dxdt)
    # JVP: exact up to float64 round-off. Central difference along the tangent line: the O(h^2)
    # truncation h^2 |f'''| / 6 with h = 1e-3 and |f'''| = O(1) here, so 1e-5 bounds it.
    tol = 1e-10 if tangent == "jvp" else 1e-5
    assert dfdt.abs().max() < tol


def test_jvp_and_finite_difference_agree_on_a_network():
    process = make_process("flow")
    torch.manual_seed(0)
    net = MLPDenoiserNet(2, hidden=32, depth=2, time_scale=10.0).double()
    student = Denoiser(net, process, "v")
    teacher = Denoiser(ExactNet(mixture(), process), process, "x0")
    jvp, fd = setup_method(process, tangent="jvp"), setup_method(process, tangent="finite_difference", fd_step=1e-4)
    t, x_t, _, _ = trig_points(jvp)
    m = trig_map(process, t, SIGMA_D)
    dxdt = jvp.velocity(*x0_eps(teacher, m.c[:, None] * x_t, m.s), t)
    a, b = jvp.tangent(student, x_t, t, dxdt), fd.tangent(student, x_t, t, dxdt)
    # O(h^2) = 1e-8 times the third derivative of a smooth (time_scale 10) network
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


class NoForwardAD(torch.autograd.Function):
    """Identity with a backward but no forward-mode rule (like a custom CUDA kernel)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


class OpaqueNet(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, cond=None, **extra):
        return NoForwardAD.apply(self.inner(x, t, cond))


def test_jvp_falls_back_to_finite_difference_with_a_warning():
    process = make_process("flow")
    mu, std = torch.tensor([1.0, -0.5], dtype=F64), 0.7
    data = GaussianMixture(mu[None], torch.tensor([std], dtype=F64))
    student = Denoiser(OpaqueNet(GaussianCM(mu, std, process)), process, "x0")
    teacher = Denoiser(ExactNet(data, process), process, "x0")
    method = setup_method(process, tangent="jvp")
    t, x_t, _, _ = trig_points(method, data=data)
    m = trig_map(process, t, SIGMA_D)
    dxdt = method.velocity(*x0_eps(teacher, m.c[:, None] * x_t, m.s), t)
    with pytest.warns(RuntimeWarning, match="finite-difference"):
        dfdt = method.tangent(student, x_t, t, dxdt)
    assert dfdt.abs().max() < 1e-5  # the finite difference's bound (see above)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched for good: no second warning
        method.tangent(student, x_t, t, dxdt)


# --- the target and the loss ---------------------------------------------------------------


def make_roles(process, student_net, data):
    return Roles({"teacher": Denoiser(ExactNet(data, process), process, "x0"),
                  "student": Denoiser(student_net, process, "x0")})


def batch_of(data, n=64, seed=3, step=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = data.sample(n, gen).x.to(F64)
    return Batch(noise=torch.randn(n, 2, generator=gen, dtype=F64), x0=x0,
                 generator=torch.Generator().manual_seed(seed + 1), step=step)


def test_warm_up_start_target_is_the_normalised_velocity_gap():
    """At r = 0 the target is g = -cos^2 t (sigma_d F^- - dx_t/dt), normalised (Alg. 1)."""
    process = make_process("flow")
    data = mixture()
    wrong = GaussianMixture(data.means * 0.8, data.stds, data.weights)  # a student that is off
    roles = make_roles(process, ExactNet(wrong, process), data)
    method = setup_method(process, warmup_steps=100, tangent_c=0.1)
    method.setup(roles, None)
    k = method.targets(batch_of(data, step=0), roles)
    assert k.r == 0.0
    t, x_t = k.t, k.x_t
    cos, sin = torch.cos(t)[:, None], torch.sin(t)[:, None]
    teacher_x0 = data.posterior_mean(x_t, torch.cos(t), SIGMA_D * torch.sin(t))
    student_x0 = wrong.posterior_mean(x_t, torch.cos(t), SIGMA_D * torch.sin(t))
    # sigma_d F = (cos x_t - x0) / sin for both, so sigma_d F^- - dx/dt = (teacher_x0 - student_x0) / sin
    g = -cos * cos * (teacher_x0 - student_x0) / sin
    g = g / (g.norm(dim=1, keepdim=True) + 0.1)
    assert torch.allclose(k.g, g, atol=1e-8, rtol=1e-7)


def test_warm_up_factor():
    assert warmup_factor(0, 100) == 0.0
    assert warmup_factor(25, 100) == 0.25
    assert warmup_factor(500, 100) == 1.0
    assert warmup_factor(0, 0) == 1.0


def test_tangent_normalisation():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=F64)
    assert torch.allclose(tangent_weighting(g, 1.0), torch.tensor([[0.5, 2 / 3], [0.0, 0.0]], dtype=F64))


def test_exact_consistency_student_has_zero_gradient_after_warm_up():
    """With r = 1, g = cos(t) df/dt = 0 for the exact consistency function: nothing to learn."""
    process = make_process("vp")  # any process: the map makes the student a TrigFlow CM
    mu, std = torch.tensor([1.0, -0.5], dtype=F64), 0.7
    data = GaussianMixture(mu[None], torch.tensor([std], dtype=F64))
    net = GaussianCM(mu, std, process)
    roles = make_roles(process, net, data)
    method = setup_method(process, warmup_steps=10)
    method.setup(roles, None)
    losses = method.loss("student", batch_of(data, step=10), roles)
    losses.total.backward()
    assert losses.terms["warmup"] == 1.0
    assert abs(float(net.scale.grad)) < 1e-9  # JVP tangent: float64 round-off


def test_loss_value_and_weighting_gradient():
    """At theta = theta^- the loss is mean(e^w ||g||^2 / D - w); dL/dw = (e^w ||g||^2 / D - 1) / B."""
    process = make_process("flow")
    data = mixture()
    wrong = GaussianMixture(data.means * 0.8, data.stds, data.weights)
    roles = make_roles(process, ExactNet(wrong, process), data)
    weighting = AdaptiveWeighting(SIGMA_D).double()
    roles = Roles({**dict(roles.items()), "weighting": weighting})
    method = SCM(SCM.Options(sigma_d=SIGMA_D, warmup_steps=0))
    method.process = process
    batch = batch_of(data)
    k = method.targets(batch, roles)
    losses = method.loss("student", batch_of(data), roles)
    sq = k.g.pow(2).sum(dim=1) / 2
    assert torch.allclose(losses.total.double(), sq.mean(), rtol=1e-6)  # w starts at 0
    losses.total.backward()
    # the last layer's bias gets sum_b dL/dw_b
    assert torch.allclose(weighting.mlp[-1].bias.grad.double(), (sq - 1).mean().reshape(1), rtol=1e-5)


# --- time sampling and the sampler ---------------------------------------------------------


def test_time_proposal_is_log_normal_in_noise_to_signal():
    method = SCM(SCM.Options(sigma_d=0.5, p_mean=-0.8, p_std=1.6))
    method.process = make_process("flow")
    n = 20000
    t = method.sample_t(Batch(noise=torch.zeros(n, 2), generator=torch.Generator().manual_seed(0)))
    tau = torch.log(0.5 * torch.tan(t))
    # sample mean and std of n normals: standard errors p_std / sqrt(n) and p_std / sqrt(2n); 4 of them
    assert abs(float(tau.mean()) + 0.8) < 4 * 1.6 / math.sqrt(n)
    assert abs(float(tau.std()) - 1.6) < 4 * 1.6 / math.sqrt(2 * n)
    lo, hi = method.time_range()
    assert float(t.min()) >= lo and float(t.max()) <= hi == pytest.approx(math.pi / 2)


def test_sampler_times():
    method = SCM(SCM.Options(sigma_d=0.5))
    method.process = make_process("flow")
    assert method.sampler_times(1) == [pytest.approx(math.pi / 2)]
    assert method.sampler_times(2)[1] == pytest.approx(math.atan(2.0))  # 1.107: the paper's t = 1.1
    # in a flow teacher's time: 1, then 1/2 and uniform below it, then t_min
    assert torch.allclose(method.student_timesteps(4), torch.tensor([1.0, 1 / 2, 1 / 3, 1 / 6, 1e-3], dtype=F64))
    assert torch.allclose(method.student_timesteps(3), torch.tensor([1.0, 1 / 2, 1 / 4, 1e-3], dtype=F64))
    custom = SCM(SCM.Options(sigma_d=0.5, sample_times=[1.1]))
    custom.process = make_process("flow")
    assert custom.sampler_times(2) == [pytest.approx(math.pi / 2), 1.1]
    with pytest.raises(DistillError, match="sample_times"):
        custom.sampler_times(3)


@pytest.mark.parametrize("name", ["flow", "vp", "edm"])
def test_multistep_sampling_is_consistency_sampling_in_trigflow(name):
    """method.sample in process time equals Alg. 1 of CMs written in TrigFlow with f = E[x0 | x_t]."""
    process = make_process(name)
    data = mixture()
    student = Denoiser(ExactNet(data, process), process, "x0")
    method = setup_method(process)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = method.sample(student, z, steps=3, generator=torch.Generator().manual_seed(5)).x0
    gen = torch.Generator().manual_seed(5)
    times = method.sampler_times(3)
    # the sampler starts at x_T = sigma(t_max) z in process units, i.e. x_t = x_T / c in TrigFlow
    x = z * float(process.sigma(torch.tensor(process.t_max, dtype=F64))) / float(trig_map(process, torch.tensor(times[0]), SIGMA_D).c)
    for i, t in enumerate(times):
        t = torch.tensor(t, dtype=F64)
        x0 = data.posterior_mean(x, torch.cos(t).expand(32), (SIGMA_D * torch.sin(t)).expand(32))
        if i + 1 < len(times):
            nxt = torch.tensor(times[i + 1], dtype=F64)
            x = torch.cos(nxt) * x0 + torch.sin(nxt) * SIGMA_D * torch.randn(32, 2, generator=gen, dtype=F64)
    assert torch.allclose(got, x0, atol=1e-9)


def test_one_step_sample_is_f_at_pi_over_2():
    """x0 = f(sigma_d z, pi/2) = -sigma_d F(z, pi/2) for a flow teacher (c(pi/2) = 1 / sigma_d)."""
    process = make_process("flow")
    data = mixture()
    student = Denoiser(ExactNet(data, process), process, "x0")
    method = setup_method(process)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    got = method.sample(student, z, steps=1).x0
    t = torch.full((16,), math.pi / 2, dtype=F64)
    m = trig_map(process, t, SIGMA_D)
    assert torch.allclose(m.c, torch.full_like(m.c, 1 / SIGMA_D))
    v = method.velocity(*x0_eps(student, m.c[:, None] * SIGMA_D * z, m.s), t)  # sigma_d F
    f = torch.cos(t)[:, None] * SIGMA_D * z - torch.sin(t)[:, None] * v
    assert torch.allclose(got, f, atol=1e-12)


# --- roles and options ---------------------------------------------------------------------


def test_roles_options_and_registration():
    method = SCM()
    assert [r.name for r in method.roles()] == ["student", "weighting"]
    assert method.roles()[0].prediction == "v"  # a fresh student predicts TrigFlow's F (v)
    assert method.phase_roles("student") == ["student", "weighting"]
    assert method.needs_data and method.kinds == frozenset({"continuous"})
    assert [r.name for r in SCM(SCM.Options(adaptive_weighting=False)).roles()] == ["student"]
    assert SCM in BUILTIN_METHODS
    for bad in ({"sigma_d": 0.0}, {"tangent": "forward"}, {"p_std": -1.0}, {"sample_times": [2.0]}):
        with pytest.raises(DistillError):
            SCM(SCM.Options(**bad))


def test_loss_without_data_says_what_to_do():
    process = make_process("flow")
    roles = make_roles(process, ExactNet(mixture(), process), mixture())
    method = setup_method(process)
    with pytest.raises(DistillError, match="real data"):
        method.loss("student", Batch(noise=torch.zeros(4, 2), generator=torch.Generator()), roles)
