"""cd: boundary condition, teacher ODE steps against closed forms, the loss and its EMA target, samplers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process, sampling_schedule
from distill.errors import DistillError
from distill.methods.cd import CD, LCM, ConsistencyFunction, boundary_coefficients, consistency_output, huber, ode_step
from distill.methods.distances import pseudo_huber
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet

F64 = torch.float64
FAMILIES = ("flow", "vp", "vp_linear", "edm", "trig")


def exact(mixture, process):
    return Denoiser(ExactNet(mixture, process), process, "x0")


class Scaled(nn.Module):
    """A trainable student: the exact denoiser times a learnable scale (1 at first)."""

    def __init__(self, mixture, process):
        super().__init__()
        self.exact = ExactNet(mixture, process)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond=None, **extra):
        return self.exact(x, t) * self.scale


def setup(method, mixture, process, data_mixture=None, student_mixture=None):
    roles = {"teacher": exact(mixture, process),
             "student": Denoiser(Scaled(student_mixture or mixture, process), process, "x0")}
    if "target" in [r.name for r in method.roles()]:
        roles["target"] = Denoiser(Scaled(student_mixture or mixture, process), process, "x0")
    roles = Roles(roles)
    method.setup(roles, None)
    return roles


def data_batch(mixture, n=64, seed=0, step=0):
    x0 = mixture.sample(n, torch.Generator().manual_seed(100 + seed)).x
    return Batch(noise=torch.randn(n, 2), x0=x0, generator=torch.Generator().manual_seed(seed), step=step)


# --- parameterisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("parameterization", ("ddim", "edm"))
def test_boundary_condition_holds_exactly_at_t_min(family, parameterization):
    process = make_process(family)
    c_skip, c_out = boundary_coefficients(process, torch.tensor([process.t_min], dtype=F64), parameterization)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    # Away from t_min the output is dominated by the x0 prediction.
    c_skip, c_out = boundary_coefficients(process, torch.tensor([process.t_max], dtype=F64), parameterization)
    assert c_skip.item() < 0.05 and c_out.item() > 0.9


def test_ddim_parameterisation_is_the_ddim_jump_to_t_min():
    """f = alpha_min x0 + sigma_min eps with eps = (x - alpha x0) / sigma (DDIM eq. 12)."""
    process = make_process("vp")
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    x, x0 = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    c_skip, c_out = boundary_coefficients(process, t, "ddim")
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    lo = torch.tensor(process.t_min, dtype=F64)
    expected = process.alpha(lo) * x0 + process.sigma(lo) * (x - a * x0) / s
    assert torch.allclose(c_skip[:, None] * x + c_out[:, None] * x0, expected, rtol=1e-12, atol=1e-12)


def test_edm_parameterisation_formula_and_pure_noise_limit():
    process, sd = make_process("flow"), 0.5
    t = torch.tensor([0.01, 0.3, 0.7], dtype=F64)
    tau = t / (1 - t) - process.t_min / (1 - process.t_min)
    c_skip, c_out = boundary_coefficients(process, t, "edm", sd)
    assert torch.allclose(c_skip, sd**2 / (tau**2 + sd**2), rtol=1e-12)
    assert torch.allclose(c_out, tau / torch.sqrt(tau**2 + sd**2), rtol=1e-12)
    # alpha(t_max) = 0 for flow: tau = inf, f is the x0 prediction alone.
    c_skip, c_out = boundary_coefficients(process, torch.tensor([1.0], dtype=F64), "edm", sd)
    assert c_skip.item() == 0.0 and c_out.item() == 1.0


# --- teacher ODE step ------------------------------------------------------------------------------


def _predict(teacher):
    return lambda x, t, target: teacher.predict(x, t, target=target)


@pytest.mark.parametrize("solver", ("euler", "heun", "ddim"))
def test_ode_step_is_exact_for_a_point_mass_under_flow(solver):
    """Data = one point mu: flow trajectories are straight, x_s = (1 - s) mu + s eps, every solver is exact."""
    process = make_process("flow")
    mu = torch.tensor([[1.5, -0.5]])
    teacher = exact(GaussianMixture(mu, torch.zeros(1)), process)
    x_t, t, s = torch.randn(8, 2, dtype=F64), torch.full((8,), 0.8, dtype=F64), torch.full((8,), 0.3, dtype=F64)
    eps = (x_t - 0.2 * mu.double()) / 0.8
    out = ode_step(_predict(teacher), process, x_t, t, s, solver)
    assert torch.allclose(out, 0.7 * mu.double() + 0.3 * eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver,order", (("euler", 1), ("heun", 2), ("ddim", 1)))
def test_ode_step_local_error_order_on_a_gaussian(solver, order):
    """Data N(mu, s^2 I) under vp: the PF-ODE map is affine,
    x_s = alpha_s mu + sqrt(alpha_s^2 s^2 + sigma_s^2) / sqrt(alpha_t^2 s^2 + sigma_t^2) (x_t - alpha_t mu);
    a solver of order p has local error O(h^(p+1)): halving h divides it by ~2^(p+1)."""
    process = make_process("vp")
    mu, std = torch.tensor([[1.0, -2.0]]), 0.3
    teacher = exact(GaussianMixture(mu, torch.full((1,), std)), process)
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.full((16,), 0.6, dtype=F64)

    def error(h):
        s = t - h
        scale = lambda u: torch.sqrt(process.alpha(u) ** 2 * std**2 + process.sigma(u) ** 2)[:, None]  # noqa: E731
        truth = process.alpha(s)[:, None] * mu + scale(s) / scale(t) * (x_t - process.alpha(t)[:, None] * mu)
        return (ode_step(_predict(teacher), process, x_t, t, s, solver) - truth).norm(dim=1).max().item()

    ratio = error(0.04) / error(0.02)
    assert 2 ** (order + 1) * 0.75 < ratio < 2 ** (order + 1) * 1.25, ratio


# --- the loss ----------------------------------------------------------------------------------------


def test_loss_is_the_distance_of_student_and_target_consistency_outputs():
    process = make_process("flow")
    mixture = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    method = CD(CD.Options(num_steps=10, skip=2, teacher_solver="heun", distance="pseudo_huber"))
    roles = setup(method, mixture, process)
    batch = data_batch(mixture, seed=1)
    losses = method.loss("student", batch, roles)

    replay = Batch(noise=batch.noise, x0=batch.x0, generator=torch.Generator().manual_seed(1))
    grid = sampling_schedule(process, 10, kind="uniform")
    j = replay.randint(9, 64)
    t_hi, t_lo = grid[j], grid[j + 2]
    x_hi = process.add_noise(batch.x0, replay.randn_like(batch.x0), t_hi)
    teacher = roles.teacher
    x_lo = ode_step(_predict(teacher), process, x_hi, t_hi, t_lo, "heun")
    f_hi = consistency_output(roles.student, x_hi, t_hi, None, boundary_coefficients(process, t_hi))
    f_lo = consistency_output(roles.target, x_lo, t_lo, None, boundary_coefficients(process, t_lo))
    expected = pseudo_huber(f_hi, f_lo).mean()
    assert torch.allclose(losses.total, expected, rtol=1e-6)
    # Where t_lo = t_min the target is x_lo itself (the boundary condition anchors the chain).
    at_min = t_lo == process.t_min
    assert at_min.any() and torch.allclose(f_lo[at_min], x_lo[at_min], atol=1e-6)


@pytest.mark.parametrize("solver", ("euler", "heun", "ddim"))
def test_loss_vanishes_at_the_true_consistency_function(solver):
    """Point-mass data, flow process: the exact denoiser is mu everywhere, so with the ddim
    parameterisation f(x, t) = (1 - t_min) mu + t_min eps(x, t) is the true consistency function,
    and every solver's step is exact: the loss is 0 up to float32 rounding."""
    process = make_process("flow")
    mixture = GaussianMixture(torch.tensor([[1.0, 2.0]]), torch.zeros(1))
    method = CD(CD.Options(num_steps=20, teacher_solver=solver, parameterization="ddim"))
    roles = setup(method, mixture, process)
    losses = method.loss("student", data_batch(mixture, seed=2), roles)
    assert losses.total.item() < 1e-10


def test_huber_distance_matches_its_definition():
    a, b = torch.zeros(3, 4), torch.tensor([[0.0, 0.0, 0.0, 0.001], [3.0, 4.0, 0.0, 0.0], [0.0] * 4])
    out = huber(a, b, c=0.5)
    assert torch.allclose(out, torch.tensor([0.5 * 0.001**2, 0.5 * (5.0 - 0.25), 0.0]), atol=1e-9)


# --- EMA target --------------------------------------------------------------------------------------


def test_target_is_an_ema_of_the_student_updated_once_per_step():
    process = make_process("flow")
    mixture = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    method = CD(CD.Options(num_steps=8, target_ema=0.9))
    roles = setup(method, mixture, process)
    assert [r.name for r in method.roles()] == ["student", "target"]
    assert method.roles()[1].init == "student"
    with torch.no_grad():
        roles.student.net.scale.fill_(2.0)
    method.loss("student", data_batch(mixture, step=0), roles)  # theta^- <- 0.9 * 1 + 0.1 * 2
    assert roles.target.net.scale.item() == pytest.approx(1.1, abs=1e-6)
    method.loss("student", data_batch(mixture, step=0), roles)  # same step: no second update
    assert roles.target.net.scale.item() == pytest.approx(1.1, abs=1e-6)
    method.loss("student", data_batch(mixture, step=1), roles)
    assert roles.target.net.scale.item() == pytest.approx(0.9 * 1.1 + 0.2, abs=1e-6)


def test_zero_target_ema_uses_the_stop_gradient_student():
    process = make_process("flow")
    mixture = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    method = CD(CD.Options(num_steps=8, target_ema=0.0))
    assert [r.name for r in method.roles()] == ["student"]
    roles = setup(method, mixture, process)
    losses = method.loss("student", data_batch(mixture), roles)
    losses.total.backward()
    assert roles.student.net.scale.grad is not None and torch.isfinite(roles.student.net.scale.grad)


def test_needs_data():
    process = make_process("flow")
    mixture = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    method = CD()
    roles = setup(method, mixture, process)
    with pytest.raises(DistillError, match="real data"):
        method.loss("student", Batch(noise=torch.randn(4, 2), generator=torch.Generator().manual_seed(0)), roles)


# --- student sampler ----------------------------------------------------------------------------------


def _sampling_setup(**options):
    process = make_process("flow")
    mixture = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    method = CD(CD.Options(**options))
    roles = setup(method, mixture, process)
    return method, roles.student, torch.randn(64, 2, generator=torch.Generator().manual_seed(5))


def test_one_step_sample_is_the_consistency_function_at_t_max():
    method, student, noise = _sampling_setup()
    out = method.sample(student, noise, steps=1)
    assert out.nfe == 1
    t = torch.ones(64, dtype=F64)
    expected = consistency_output(student, noise, t, None, boundary_coefficients(student.process, t))
    assert torch.allclose(out.x0, expected)


def test_tcd_with_gamma_one_is_multistep_consistency_sampling():
    consistency, student, noise = _sampling_setup(sampler="consistency")
    tcd, _, _ = _sampling_setup(sampler="tcd", gamma=1.0)
    a = consistency.sample(student, noise, steps=4, generator=torch.Generator().manual_seed(9))
    b = tcd.sample(student, noise, steps=4, generator=torch.Generator().manual_seed(9))
    assert a.nfe == b.nfe == 4
    assert torch.equal(a.x0, b.x0)
    # and it is stochastic: another generator gives other samples
    c = tcd.sample(student, noise, steps=4, generator=torch.Generator().manual_seed(10))
    assert not torch.allclose(a.x0, c.x0)


def test_tcd_with_gamma_zero_is_deterministic_ddim_chaining():
    method, student, noise = _sampling_setup(sampler="tcd", gamma=0.0)
    a = method.sample(student, noise, steps=3, generator=torch.Generator().manual_seed(1))
    b = method.sample(student, noise, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.x0, b.x0)
    # gamma = 0: x_{i+1} = alpha_{i+1} f_i + sigma_{i+1} (x_i - alpha_i f_i) / sigma_i (DDIM through f).
    process = student.process
    f = ConsistencyFunction(student, method.options.parameterization, method.options.sigma_data)
    ts = sampling_schedule(process, 3)
    x = noise
    for i in range(2):
        t = ts[i].expand(64)
        x0 = f.predict(x, t.float())
        a_t, s_t, a_n, s_n = (float(v) for v in (process.alpha(ts[i]), process.sigma(ts[i]),
                                                 process.alpha(ts[i + 1]), process.sigma(ts[i + 1])))
        x = a_n * x0 + s_n * (x - a_t * x0) / s_t
    expected = f.predict(x, ts[2].expand(64).float())
    assert torch.allclose(a.x0, expected, atol=1e-5)


# --- options -------------------------------------------------------------------------------------------


def test_options_and_errors():
    assert CD.needs_data and CD.kinds == frozenset({"continuous"}) and CD.max_student_steps is None
    with pytest.raises(DistillError, match="skip"):
        CD(CD.Options(num_steps=4, skip=5))
    with pytest.raises(DistillError, match="teacher_solver"):
        CD(CD.Options(teacher_solver="rk4"))
    with pytest.raises(DistillError, match="target_ema"):
        CD(CD.Options(target_ema=1.0))
    with pytest.raises(DistillError, match="sampler"):
        CD(CD.Options(sampler="ddim"))
    with pytest.raises(DistillError, match="gamma"):
        CD(CD.Options(gamma=1.5))
    with pytest.raises(DistillError, match="distance"):
        CD(CD.Options(distance="lpips"))
    with pytest.raises(DistillError, match="parameterization"):
        CD(CD.Options(parameterization="trig"))
    assert math.isclose(LCM().options.guidance, 1.0)
