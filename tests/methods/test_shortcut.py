"""shortcut: the dyadic grid, flow-matching and self-consistency targets, EMA targets, the sampler.

The oracle is the exact flow map of a Gaussian mixture taken with Heun steps of a fixed size
(1/64 of the span): two half steps then repeat exactly the Heun steps of one full step, so the
self-consistency target of eq. 4 equals the full shortcut to rounding.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.methods.shortcut import Shortcut, dyadic_levels
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet

PROCESS = make_process("flow")
SPAN = PROCESS.t_max - PROCESS.t_min
MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.3)
PER_SPAN = 64  # Heun substeps per span of the oracle


def teacher() -> Denoiser:
    return Denoiser(ExactNet(MIXTURE, PROCESS), PROCESS, "x0").double()


class ExactShortcut(nn.Module):
    """s(x_t, t, d) of the exact teacher: Heun steps of SPAN / PER_SPAN from t down to t - d SPAN;
    at d = 0 the instantaneous velocity."""

    def __init__(self):
        super().__init__()
        self.teacher = teacher()

    def forward(self, x, t, cond=None, d=None):
        out = self.teacher.predict(x, t, target="flow")
        for i in range(x.shape[0]):
            n = round(float(d[i]) * PER_SPAN)
            if n == 0:
                continue
            y, s, h = x[i : i + 1], t[i : i + 1], -float(d[i]) * SPAN / n
            for _ in range(n):
                k1 = self.teacher.predict(y, s, target="flow")
                k2 = self.teacher.predict(y + h * k1, s + h, target="flow")
                y, s = y + h * (k1 + k2) / 2, s + h
            out[i] = (x[i] - y[0]) / (float(d[i]) * SPAN)
        return out


class Affine(nn.Module):
    """s = a x + b t + c d: the bootstrap target has a closed form."""

    def __init__(self, a: float, b: float, c: float):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (a, b, c))

    def forward(self, x, t, cond=None, d=None):
        return self.a * x + self.b * t[:, None] + self.c * d[:, None]


class Offset(nn.Module):
    def __init__(self, delta: float):
        super().__init__()
        self.teacher, self.delta = teacher(), nn.Parameter(torch.tensor(delta, dtype=torch.float64))

    def forward(self, x, t, cond=None, d=None):
        return self.teacher.predict(x, t, target="flow") + self.delta


def data_batch(n: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x0 = MIXTURE.sample(n, g).x.double()
    return Batch(noise=torch.zeros_like(x0), x0=x0, generator=torch.Generator().manual_seed(seed + 1))


def method_with(student: nn.Module, ema: nn.Module | None = None, **options) -> tuple[Shortcut, Roles]:
    method = Shortcut(Shortcut.Options(x0_source="data", **options))
    modules = {"teacher": teacher(), "student": Denoiser(student, PROCESS, "flow")}
    if ema is not None:
        modules["student_ema"] = Denoiser(ema, PROCESS, "flow")
    roles = Roles(modules)
    method.setup(roles, modality=None)
    return method, roles


def test_bootstrap_grid_is_dyadic_and_stays_in_the_span():
    method, _ = method_with(Offset(0.0), Offset(0.0), finest_steps=16)
    assert dyadic_levels(9, 4).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    t, full = method.bootstrap_times(data_batch(), 400)
    assert set(full.tolist()) == {1.0, 0.5, 0.25, 0.125}  # 2d = 1, ..., 2/M
    k = (PROCESS.t_max - t.double()) / (full.double() * SPAN)
    assert torch.allclose(k, k.round(), atol=1e-4)  # t on the grid of its own step
    assert bool((t.double() - full.double() * SPAN >= PROCESS.t_min - 1e-6).all())
    for step in (0.125, 0.25):  # every grid point of a level is visited
        assert len(set(k[full == step].round().tolist())) == round(1 / step)


def test_flow_matching_targets_the_teacher_velocity():
    delta = 0.25
    method, roles = method_with(Offset(delta), Offset(0.0), bootstrap_fraction=0.0)
    out = method.loss("student", data_batch(), roles)
    assert float(out.total.detach()) == pytest.approx(delta**2, rel=1e-10)
    assert "bootstrap" not in out.terms


@pytest.mark.parametrize("teacher_base", [False, True])
def test_bootstrap_target_closed_form_from_the_ema(teacher_base):
    # The student is the constant 0 and the EMA an affine map, so the loss is |target|^2 with the
    # target built from the EMA alone: s1 = s(x, t, d), x' = x - d T s1, s2 = s(x', t - d T, d).
    a, b, c, m = 0.7, -0.4, 0.9, 8
    method, roles = method_with(Affine(0.0, 0.0, 0.0), Affine(a, b, c), bootstrap_fraction=1.0,
                                finest_steps=m, teacher_base=teacher_base)
    out = method.loss("student", data_batch(12), roles)
    again = data_batch(12)
    t, full = method.bootstrap_times(again, 12)
    x = PROCESS.add_noise(again.x0, again.randn_like(again.x0), t)
    t, half = t.double(), full.double() / 2
    d_in = torch.where(half <= 1 / m, torch.zeros_like(half), half)[:, None]

    def s(y, time):
        return a * y + b * time[:, None] + c * d_in

    s1 = s(x, t)
    s2 = s(x - half[:, None] * SPAN * s1, t - half * SPAN)
    if teacher_base:  # the finest level (half = 1/M) takes two Euler steps of the teacher instead
        fine = (half <= 1 / m)
        v1 = roles.teacher.predict(x, t, target="flow")
        v2 = roles.teacher.predict(x - half[:, None] * SPAN * v1, t - half * SPAN, target="flow")
        s1, s2 = torch.where(fine[:, None], v1, s1), torch.where(fine[:, None], v2, s2)
    expected = ((s1 + s2) / 2).pow(2).mean()
    assert torch.allclose(out.total, expected, rtol=1e-6)
    assert float(out.terms["bootstrap"]) == pytest.approx(float(expected), rel=1e-6)


def test_exact_flow_map_is_self_consistent():
    # Below the finest level two half-step shortcuts of the fixed-substep oracle repeat its full
    # shortcut's Heun steps, so the target equals s(x, t, 2d) up to float64 rounding.
    method, roles = method_with(ExactShortcut(), ExactShortcut(), finest_steps=16, teacher_base=False)
    batch = data_batch(12)
    t, full = method.bootstrap_times(batch, 12)
    x = PROCESS.add_noise(batch.x0, batch.randn_like(batch.x0), t)
    coarse = full > 2 / 16  # half steps above the finest: no d = 0 query involved
    target = method.bootstrap_target(roles, x[coarse], t[coarse].double(), full[coarse].double(), None)
    with torch.no_grad():
        direct = method.shortcut(roles.student, x[coarse], t[coarse].double(), full[coarse].double(), None)
    assert torch.allclose(target, direct, atol=1e-10)


def test_ema_is_required_for_ema_targets():
    method, roles = method_with(Offset(0.0), None)
    with pytest.raises(DistillError, match="ema.half_life"):
        method.loss("student", data_batch(), roles)
    method, roles = method_with(Offset(0.0), None, bootstrap_model="student")
    assert torch.isfinite(method.loss("student", data_batch(), roles).total)


def test_sampler_chains_shortcuts_on_the_uniform_schedule():
    method, roles = method_with(ExactShortcut(), finest_steps=16)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        out = {k: method.sample(roles.student, noise, steps=k) for k in (1, 2, 4)}
    assert [out[k].nfe for k in (1, 2, 4)] == [1, 2, 4]
    assert torch.allclose(out[1].x0, out[2].x0, atol=1e-10)
    assert torch.allclose(out[1].x0, out[4].x0, atol=1e-10)
    assert method.step_input(torch.tensor([1 / 16, 1 / 32, 1 / 8])).tolist() == [0.0, 0.0, 0.125]


def test_roles_and_options():
    (student,) = Shortcut().roles()
    assert student.extra_inputs == ("d",) and student.prediction == "flow"
    assert Shortcut(Shortcut.Options(x0_source="data")).needs_data
    for bad in ({"finest_steps": 96}, {"finest_steps": 1}, {"bootstrap_fraction": -0.1}, {"bootstrap_model": "teacher"}):
        with pytest.raises(DistillError):
            Shortcut(Shortcut.Options(**bad))
