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
