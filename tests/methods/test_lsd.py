"""lsd: scaled predictions, the coefficient sampler against plain ancestral sampling, coefficients
round-tripping through the sidecar, and gradients reaching only the coefficients."""
from __future__ import annotations

import pytest
import torch

from distill import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Roles
from distill.methods.lsd import LSD, SamplerCoefficients, coefficient_sampler, scaled_log_probs
from distill.process import MaskedProcess, sampling_schedule
from distill.samplers import ancestral
from tests.fixtures.token_plugin import L, V, ExactTokenNet, TinyTokens


def test_scaled_log_probs():
    logp = torch.log_softmax(torch.tensor([[1.0, 2.0, 0.5]]), -1)
    assert torch.allclose(scaled_log_probs(logp, torch.tensor(1.0)), logp, atol=1e-6)
    sharp = scaled_log_probs(logp, torch.tensor(50.0)).exp()
    assert float(sharp[0, 1]) > 0.999  # a large scale is the argmax
    one_hot = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert torch.equal(scaled_log_probs(one_hot, torch.tensor(3.0)).exp(), torch.tensor([[1.0, 0.0, 0.0]]))


def test_unit_coefficients_are_the_ancestral_sampler():
    p = MaskedProcess(V)
    d = Denoiser(ExactTokenNet(p), p, prediction="logits")
    ts = sampling_schedule(p, 4)
    a = ancestral(d, p.prior((256, L)), timesteps=ts, generator=torch.Generator().manual_seed(0)).x0
    b = coefficient_sampler(d, p.prior((256, L)), None, ts, [1.0] * 4, [0.0] * 4, torch.Generator().manual_seed(0)).x0
    assert torch.equal(a, b)
    with pytest.raises(DistillError, match="trained for 3 steps"):
        coefficient_sampler(d, p.prior((2, L)), None, ts, [1.0] * 3, [0.0] * 3)


def test_gradients_reach_only_the_coefficients_and_the_sidecar_carries_them():
    p = MaskedProcess(V)
    teacher = Denoiser(ExactTokenNet(p), p, prediction="logits")
    student = Denoiser(TinyTokens().build_network("student"), p, prediction="logits").requires_grad_(False)
    with torch.no_grad():  # a student with some opinion (a fresh one predicts uniform)
        for w in student.parameters():
            w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.2)
    m = LSD(LSD.Options(teacher_steps=8))
    m.student_steps = 2
    coef = SamplerCoefficients(2)
    roles = Roles({"teacher": teacher, "student": student, "sampler": coef})
    m.setup(roles, TinyTokens())
    batch = Batch(noise=torch.randn(32, L), generator=torch.Generator().manual_seed(1), x_T=p.prior((32, L)))
    loss = m.loss("sampler", batch, roles)
    loss.total.backward()
    assert coef.rho.grad is not None and bool(coef.rho.grad.abs().sum() > 0)
    assert all(w.grad is None for w in student.parameters())
    with torch.no_grad():
        coef.rho.fill_(0.5)
    spec = m.sampler_spec(2)
    assert spec["name"] == "method" and spec["logit_scale"] == pytest.approx([1.6487213] * 2)
    fresh = LSD()
    fresh.restore({"sampler": spec})
    out = fresh.sample(student, torch.randn(8, L), steps=2, generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (8, L) and out.nfe == 2


def _law(x: torch.Tensor) -> torch.Tensor:
    """Empirical distribution of [n, L] sequences over all V^L of them."""
    from tests.fixtures.token_plugin import sequence_index

    return torch.bincount(sequence_index(x), minlength=V ** L).double() / x.shape[0]


def test_zero_reveal_logits_have_the_ancestral_samplers_law():
    """theta = 0 reveals each masked token at each of N steps with probability 1/N, which is what
    the linear-schedule ancestral sampler does; the two laws agree up to sampling noise (each
    cell's standard error is at most sqrt(0.25 / n) = 0.0025 here, summed over 27 cells for TV)."""
    from distill.methods.lsd import order_sampler

    p = MaskedProcess(V)
    d = Denoiser(ExactTokenNet(p), p, prediction="logits")
    ts = sampling_schedule(p, 2)
    n = 40_000
    a = ancestral(d, p.prior((n, L)), timesteps=ts, generator=torch.Generator().manual_seed(0)).x0
    b = order_sampler(d, p.prior((n, L)), None, ts, [1.0] * 2, [0.0] * 2, torch.zeros(L, 2),
                      torch.Generator().manual_seed(1)).x0
    assert 0.5 * (_law(a) - _law(b)).abs().sum() < 0.03
    with pytest.raises(DistillError, match="learned for"):
        order_sampler(d, p.prior((2, L)), None, sampling_schedule(p, 3), [1.0] * 3, [0.0] * 3, torch.zeros(L, 2))


def test_learned_reveal_order_finds_an_exact_three_step_plan():
    """The fixture's three tokens all depend on each other, so a step that reveals two of them at
    once (which the ancestral sampler's random reveals often do at three steps) draws them
    independently and misses the joint law, unless the context already determines one of them
    (x1 and x2 determine each other). Plans that respect that are exact; REINFORCE on the reveal
    logits must find one and bring the three-step law to the exact one."""
    from tests.fixtures.token_plugin import exact_joint_table

    p = MaskedProcess(V)
    teacher = Denoiser(ExactTokenNet(p), p, prediction="logits")
    # a 256-step teacher pool: the rare sample that two same-step reveals made impossible is the noise
    m = LSD(LSD.Options(teacher_steps=256, reveal_order="learned", teacher_pool=4096, pool_batch=1024))
    m.student_steps = 3
    coef = m.build_role(m.roles()[1], None, TinyTokens())
    assert coef.theta is not None and coef.theta.shape == (L, 3)
    roles = Roles({"teacher": teacher, "student": teacher, "sampler": coef})
    m.setup(roles, TinyTokens())
    # the reveal logits alone (the exact net's time input is no place for a learned shift: at t = 1
    # it gives no answer for a revealed context)
    opt = torch.optim.Adam([coef.theta], lr=0.1)
    exact = exact_joint_table()

    def tv_now(seed: int) -> float:
        out = m.sample(teacher, torch.randn(20_000, L), steps=3, generator=torch.Generator().manual_seed(seed)).x0
        return float(0.5 * (_law(out) - exact).abs().sum())

    before = tv_now(0)
    for step in range(150):
        batch = Batch(noise=torch.randn(256, L), generator=torch.Generator().manual_seed(100 + step), x_T=p.prior((256, L)))
        opt.zero_grad()
        m.loss("sampler", batch, roles).total.backward()
        opt.step()
    pi = torch.softmax(coef.theta.detach(), -1)
    assert bool((pi.max(-1).values > 0.9).all())  # each position settled on one step
    after = tv_now(1)
    assert before > 0.1 and after < 0.03, (before, after)
    spec = m.sampler_spec(3)
    fresh = LSD(LSD.Options(reveal_order="learned"))
    fresh.restore({"sampler": spec})
    again = fresh.sample(teacher, torch.randn(64, L), steps=3, generator=torch.Generator().manual_seed(2))
    assert again.nfe == 3 and torch.equal(
        again.x0, m.sample(teacher, torch.randn(64, L), steps=3, generator=torch.Generator().manual_seed(2)).x0)


def test_learned_reveal_order_needs_the_masked_process():
    from distill.process import UniformProcess

    with pytest.raises(DistillError, match="reveal_order must be"):
        LSD(LSD.Options(reveal_order="confident"))
    p = UniformProcess(V)
    m = LSD(LSD.Options(reveal_order="learned"))
    m.student_steps = 2
    d = Denoiser(ExactTokenNet(p), p, prediction="logits")
    with pytest.raises(DistillError, match="masked process"):
        m.setup(Roles({"teacher": d, "student": d, "sampler": SamplerCoefficients(2, L)}), TinyTokens())
