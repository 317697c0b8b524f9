"""lcm: guided teacher step against a closed form, w reaches student and target, w at sampling time."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.methods.cd import CD, LCM
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet

F64 = torch.float64
MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.2)


class ClassExact(nn.Module):
    """Class-conditional exact denoiser: label k is mixture component k alone, label K (null) the whole mixture."""

    def __init__(self, mixture, process):
        super().__init__()
        self.mixture, self.process = mixture, process

    def forward(self, x, t, cond=None, **extra):
        a, s = self.process.alpha(t), self.process.sigma(t)
        full = self.mixture.posterior_mean(x, a, s)
        if cond is None:
            return full
        parts = [GaussianMixture(self.mixture.means[k : k + 1], self.mixture.stds[k : k + 1]).posterior_mean(x, a, s)
                 for k in range(self.mixture.k)]
        table = torch.stack([*parts, full])  # [K + 1, B, D]
        return table[cond, torch.arange(x.shape[0])]


class Recorder(nn.Module):
    """Student/target network: the exact denoiser times a learnable scale; records the w it is given."""

    def __init__(self, mixture, process):
        super().__init__()
        self.exact = ExactNet(mixture, process)
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor | None] = []

    def forward(self, x, t, cond=None, **extra):
        self.seen.append(extra.get("w"))
        return self.exact(x, t) * self.scale


def _roles(process, teacher_net):
    return Roles({
        "teacher": Denoiser(teacher_net, process, "x0"),
        "student": Denoiser(Recorder(MIXTURE, process), process, "x0"),
        "target": Denoiser(Recorder(MIXTURE, process), process, "x0"),
    })


def _batch(n=64, seed=0, cond=True):
    gen = torch.Generator().manual_seed(50 + seed)
    x0 = MIXTURE.sample(n, gen).x
    labels = torch.randint(0, MIXTURE.k, (n,), generator=gen) if cond else None
    null = torch.full((n,), MIXTURE.k) if cond else None
    return Batch(noise=torch.randn(n, 2), x0=x0, cond=labels, null_cond=null, generator=torch.Generator().manual_seed(seed))


def test_student_and_target_declare_w():
    roles = LCM().roles()
    assert [(r.name, r.extra_inputs) for r in roles] == [("student", ("w",)), ("target", ("w",))]
    assert roles[1].init == "student"
    assert all(r.extra_inputs == () for r in CD().roles())


def test_guided_ddim_target_matches_the_closed_form():
    """x^_{t_n} = alpha_s x0_g + sigma_s (x - alpha_t x0_g) / sigma_t with
    x0_g = x0_u + w (x0_c - x0_u), x0_c the Gaussian posterior mean of the labelled component
    mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha mu_k), x0_u the mixture's."""
    process = make_process("flow")
    method = LCM(LCM.Options(num_steps=10, skip=3, teacher_solver="ddim", guidance_min=2.0, guidance_max=6.0))
    roles = _roles(process, ClassExact(MIXTURE, process))
    method.setup(roles, None)
    batch = _batch()
    pair = method.pair(batch, roles)
    assert pair.w is not None and bool(((pair.w >= 2.0) & (pair.w <= 6.0)).all()) and pair.w.std() > 0.5

    x, t, s, w = pair.x_hi.double(), pair.t_hi, pair.t_lo, pair.w
    a_t, s_t, a_s, s_s = (v[:, None] for v in (process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s)))
    mu, std = MIXTURE.means.double()[batch.cond], MIXTURE.stds.double()[batch.cond][:, None]
    x0_c = mu + a_t * std**2 / (a_t**2 * std**2 + s_t**2) * (x - a_t * mu)
    x0_u = MIXTURE.posterior_mean(x, a_t, s_t).double()
    x0_g = x0_u + w[:, None] * (x0_c - x0_u)
    expected = a_s * x0_g + s_s * (x - a_t * x0_g) / s_t
    assert torch.allclose(pair.x_lo.double(), expected, rtol=1e-5, atol=1e-5)
    # guidance matters here: the unguided step lands elsewhere
    unguided = a_s * x0_c + s_s * (x - a_t * x0_c) / s_t
    assert (pair.x_lo.double() - unguided).abs().max() > 0.1


def test_w_reaches_student_and_target():
    process = make_process("flow")
    method = LCM(LCM.Options(num_steps=10))
    roles = _roles(process, ClassExact(MIXTURE, process))
    method.setup(roles, None)
    losses = method.loss("student", _batch(seed=3), roles)
    replay = method.pair(_batch(seed=3), roles)  # same draws: same w
    student_w, target_w = roles.student.net.seen[-1], roles.target.net.seen[-1]
    assert torch.allclose(student_w, replay.w.float()) and torch.allclose(target_w, replay.w.float())
    losses.total.backward()
    assert roles.student.net.scale.grad is not None


def test_unconditional_guidance_is_a_no_op():
    """Without a condition the guided step is the plain one: lcm's pair is cd's (same draws, same solver)."""
    process = make_process("flow")
    teacher = ExactNet(MIXTURE, process)
    lcm = LCM(LCM.Options(num_steps=10, skip=2, teacher_solver="heun", guidance_min=3.0, guidance_max=3.0))
    cd = CD(CD.Options(num_steps=10, skip=2, teacher_solver="heun"))
    roles = _roles(process, teacher)
    lcm.setup(roles, None)
    cd.setup(roles, None)
    a, b = lcm.pair(_batch(seed=4, cond=False), roles), cd.pair(_batch(seed=4, cond=False), roles)
    assert torch.equal(a.x_lo, b.x_lo) and torch.allclose(a.w, torch.full_like(a.w, 3.0))


@pytest.mark.parametrize("guidance", (1.0, 2.5))
def test_sampling_passes_the_guidance_option_as_w(guidance):
    process = make_process("flow")
    method = LCM(LCM.Options(guidance=guidance))
    roles = _roles(process, ExactNet(MIXTURE, process))
    method.setup(roles, None)
    method.sample(roles.student, torch.randn(16, 2), steps=2, generator=torch.Generator().manual_seed(0))
    seen = roles.student.net.seen
    assert len(seen) == 2 and all(torch.equal(w, torch.full((16,), guidance)) for w in seen)


def test_guidance_range_is_checked():
    with pytest.raises(DistillError, match="guidance_min"):
        LCM(LCM.Options(guidance_min=3.0, guidance_max=2.0))
