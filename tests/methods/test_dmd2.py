"""dmd2: the student's gradient is the normalised score difference; phases; GAN head; multistep."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.method import Method
from distill.methods.dmd2 import DMD2
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet


class FixedOutput(nn.Module):
    """A 'student' whose output is a free parameter: its gradient is dL/dx0 itself."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = nn.Parameter(x0.clone())

    def forward(self, x, t, cond=None, **extra):
        return self.x0


def make_roles(process):
    real = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    fake = GaussianMixture(real.means * 0.7, real.stds, real.weights)
    gen = torch.Generator().manual_seed(0)
    x0 = fake.sample(32, gen).x
    return Roles({
        "teacher": Denoiser(ExactNet(real, process), process, "x0"),
        "critic": Denoiser(ExactNet(fake, process), process, "x0"),
        "student": Denoiser(FixedOutput(x0), process, "x0"),
    })


def test_student_gradient_is_normalised_score_difference():
    process = make_process("flow")
    roles = make_roles(process)
    method = DMD2(DMD2.Options(normalize=True))
    method.setup(roles, None)
    batch = Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3))
    losses = method.loss("student", batch, roles)
    losses.total.backward()
    # Recompute the same draws: times first, then the noise (the order the loss uses).
    replay = Batch(noise=batch.noise, generator=torch.Generator().manual_seed(3))
    t = method._times(replay)
    x0 = roles.student.net.x0.detach()
    x_t = process.add_noise(x0, replay.randn_like(x0), t)
    real = roles.teacher.predict(x_t, t)
    fake = roles.critic.predict(x_t, t)
    grad = (fake - real) / (x0 - real).abs().mean(dim=1, keepdim=True)
    # L = 1/2 mean((x0 - sg(x0 - grad))^2) over N = B*D elements  =>  dL/dx0 = grad / N
    expected = grad / x0.numel()
    assert torch.allclose(roles.student.net.x0.grad, expected, rtol=1e-5, atol=1e-8)


def test_gradient_vanishes_when_student_matches_teacher():
    process = make_process("flow")
    roles = make_roles(process)
    roles = Roles({"teacher": roles.teacher, "critic": roles.teacher, "student": roles.student})
    method = DMD2()
    method.setup(roles, None)
    losses = method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(1)), roles)
    losses.total.backward()
    assert roles.student.net.x0.grad.abs().max() == 0


def test_phase_schedule_and_roles():
    method = DMD2(DMD2.Options(critic_updates=3))
    assert method.phases(0) == ["critic", "critic", "critic", "student"]
    assert [r.name for r in method.roles()] == ["student", "critic"]
    assert not method.needs_data
    gan = DMD2(DMD2.Options(gan_weight=0.01))
    assert [r.name for r in gan.roles()] == ["student", "critic", "discriminator"]
    assert gan.needs_data and gan.phase_roles("critic") == ["critic", "discriminator"]


def test_critic_target_is_the_native_prediction():
    """A critic that predicts flow velocity regresses alpha' x0 + sigma' eps of the student's samples."""
    process = make_process("flow")
    roles = make_roles(process)
    critic_net = nn.Linear(2, 2)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = critic_net

        def forward(self, x, t, cond=None, **extra):
            return self.lin(x)

    roles = Roles({"teacher": roles.teacher, "student": roles.student, "critic": Denoiser(Wrap(), process, "flow")})
    method = DMD2()
    method.setup(roles, None)
    batch = Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(5))
    loss = method.loss("critic", batch, roles).total
    replay = Batch(noise=batch.noise, generator=torch.Generator().manual_seed(5))
    x0 = roles.student.net.x0.detach()
    t = method._times(replay)
    eps = replay.randn_like(x0)
    x_t = process.add_noise(x0, eps, t)
    target = eps - x0  # flow velocity of alpha = 1 - t, sigma = t
    assert torch.allclose(loss, (critic_net(x_t) - target).pow(2).mean(), rtol=1e-5)


def _recording_logits(method, seen):
    """Stand in for the discriminator (the exact networks have no feature layers)."""
    def logits(roles, x_t, t, cond):
        seen.append(t.clone())
        return x_t.sum(dim=1)  # any differentiable logit: this test looks at the times only
    method._logits = logits


def test_gan_terms_draw_times_from_their_own_range():
    process = make_process("flow")
    roles = make_roles(process)
    method = DMD2(DMD2.Options(gan_weight=0.01, t_lo=0.5, t_hi=0.98, gan_t_lo=0.0, gan_t_hi=0.1))
    Method.setup(method, roles, None)
    seen = []
    _recording_logits(method, seen)
    batch = Batch(noise=torch.randn(32, 2), x0=torch.randn(32, 2), generator=torch.Generator().manual_seed(2))
    critic = method.loss("critic", batch, roles)
    student = method.loss("student", batch, roles)
    assert {"denoise", "discriminator"} <= set(critic.terms) and "gan" in student.terms
    assert len(seen) == 3  # fake and real in the critic phase, generated in the student phase
    span = process.t_max - process.t_min
    for t in seen:
        assert bool((t >= process.t_min).all()) and bool((t <= process.t_min + 0.1 * span + 1e-6).all())


def test_gan_shares_the_dm_times_by_default():
    process = make_process("flow")
    roles = make_roles(process)
    method = DMD2(DMD2.Options(gan_weight=0.01, t_lo=0.5, t_hi=0.98))
    Method.setup(method, roles, None)
    seen = []
    _recording_logits(method, seen)
    method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(4)), roles)
    assert bool((seen[0] >= process.t_min + 0.5 * (process.t_max - process.t_min) - 1e-6).all())
    with pytest.raises(DistillError, match="gan_t_lo"):
        DMD2(DMD2.Options(gan_t_lo=0.3, gan_t_hi=0.2))


def test_logit_normal_times_stay_in_range_and_follow_their_median():
    """t_dist=logit_normal draws u = sigmoid(N(t_mean, t_std^2)) mapped onto [t_lo, t_hi]: inside the
    range, with median t_lo + (t_hi - t_lo) sigmoid(t_mean) (the sigmoid is monotone)."""
    process = make_process("flow")
    method = DMD2(DMD2.Options(t_lo=0.02, t_hi=0.98, t_dist="logit_normal", t_mean=-1.0, t_std=1.0))
    method.setup(make_roles(process), None)
    n = 20_000
    t = method._times(Batch(noise=torch.randn(n, 2), generator=torch.Generator().manual_seed(5)))
    span = process.t_max - process.t_min
    lo, hi = process.t_min + 0.02 * span, process.t_min + 0.98 * span
    assert bool((t >= lo).all()) and bool((t <= hi).all())
    median = lo + (hi - lo) * torch.sigmoid(torch.tensor(-1.0))
    # a sample median's standard error is 1 / (2 f(median) sqrt(n)): 0.0017 here (density f = 2.1), 0.0034
    # for the uniform draw below (f = 1 / 0.96); 0.02 is at least 6 of them
    assert abs(float(t.median()) - float(median)) < 0.02
    plain = DMD2(DMD2.Options())  # the uniform default: centred on the middle of the range
    plain.setup(make_roles(process), None)
    uniform = plain._times(Batch(noise=torch.randn(n, 2), generator=torch.Generator().manual_seed(5)))
    assert abs(float(uniform.median()) - (process.t_min + 0.5 * span)) < 0.02
    with pytest.raises(DistillError, match="t_dist"):
        DMD2(DMD2.Options(t_dist="lognormal"))
    with pytest.raises(DistillError, match="t_std"):
        DMD2(DMD2.Options(t_dist="logit_normal", t_std=0.0))


def test_r1_penalty_is_the_squared_input_gradient_of_the_real_logits():
    process = make_process("flow")
    roles = make_roles(process)
    w = torch.tensor([0.3, -1.2])
    method = DMD2(DMD2.Options(gan_weight=0.01, r1_weight=4.0))
    Method.setup(method, roles, None)
    # a discriminator linear in its input, D(x) = w . x + c: ||grad_x D||^2 = ||w||^2 for every sample
    method._logits = lambda roles, x_t, t, cond: x_t @ w + 1.0
    batch = Batch(noise=torch.randn(32, 2), x0=torch.randn(32, 2), generator=torch.Generator().manual_seed(3))
    losses = method.loss("critic", batch, roles)
    assert torch.allclose(losses.terms["r1"], w.pow(2).sum())
    expected = losses.terms["denoise"] + losses.terms["discriminator"] + 0.5 * 4.0 * w.pow(2).sum()
    assert torch.allclose(losses.total, expected)
    # no penalty by default; a negative weight is refused
    method0 = DMD2(DMD2.Options(gan_weight=0.01))
    Method.setup(method0, roles, None)
    method0._logits = method._logits
    assert "r1" not in method0.loss("critic", batch, roles).terms
    with pytest.raises(DistillError, match="r1_weight"):
        DMD2(DMD2.Options(r1_weight=-1.0))


def test_r1_penalty_trains_the_discriminator_through_the_input_gradient():
    from distill.methods.dmd2 import r1_penalty

    a = torch.tensor(2.0, requires_grad=True)
    x = torch.randn(8, 3, requires_grad=True)
    logits = a * x.pow(2).sum(dim=1)  # grad_x = 2 a x, so R1 = 4 a^2 E||x||^2
    r1 = r1_penalty(logits, x)
    assert torch.allclose(r1, 4 * a.detach() ** 2 * x.detach().pow(2).sum(1).mean())
    (da,) = torch.autograd.grad(r1, a)
    assert torch.allclose(da, 8 * a.detach() * x.detach().pow(2).sum(1).mean())
