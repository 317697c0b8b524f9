"""fdistill: DMD's gradient weighted by h(r) = f''(r) r^2 of the chosen f-divergence."""
from __future__ import annotations

import math

import pytest
import torch

from distill import Batch, make_process
from distill.errors import DistillError
from distill.methods.dmd2 import DMD2
from distill.methods.fdistill import WEIGHTS, FDistill, f_weights
from tests.methods.test_dmd2 import make_roles

# the generators f(r) of D_f(p || q) = E_q[f(p / q)] (f-distill table 1)
GENERATORS = {
    "reverse_kl": lambda r: -torch.log(r),
    "forward_kl": lambda r: r * torch.log(r),
    "js": lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
    "hellinger": lambda r: (torch.sqrt(r) - 1) ** 2,
}


@pytest.mark.parametrize("divergence", sorted(GENERATORS))
def test_weights_are_f_second_derivative_times_r_squared(divergence):
    r = torch.tensor([0.05, 0.3, 1.0, 2.5, 20.0], dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(GENERATORS[divergence](r).sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    expected = second * r.detach() ** 2
    assert torch.allclose(WEIGHTS[divergence](torch.log(r.detach())), expected, rtol=1e-10)


def test_weights_normalise_clip_and_reject_unknown_divergences():
    log_r = torch.tensor([-10.0, 0.0, math.log(3.0)])
    h = f_weights(log_r, "forward_kl", clip=5.0)
    raw = torch.tensor([math.exp(-5.0), 1.0, 3.0])
    assert torch.allclose(h, raw / raw.mean()) and abs(h.mean().item() - 1) < 1e-6
    assert torch.equal(f_weights(log_r, "reverse_kl"), torch.ones(3))
    with pytest.raises(DistillError, match="unknown divergence"):
        f_weights(log_r, "tv")
    with pytest.raises(DistillError, match="unknown divergence"):
        FDistill(FDistill.Options(divergence="tv"))
    with pytest.raises(DistillError, match="gan_t_lo"):
        FDistill(FDistill.Options(gan_t_hi=0.2))


def test_roles_and_data_needs():
    method = FDistill()
    assert method.discriminates and method.needs_data  # the density ratio needs a discriminator on real data
    assert [r.name for r in method.roles()] == ["student", "critic", "discriminator"]
    assert method.phase_roles("critic") == ["critic", "discriminator"]


def test_gradient_is_dmd_times_per_sample_weights(monkeypatch):
    process = make_process("flow")
    roles = make_roles(process)
    log_r = torch.linspace(-2, 2, 32)
    method = FDistill(FDistill.Options(divergence="forward_kl"))
    method.process = process
    monkeypatch.setattr(method, "_logits", lambda roles, x_t, t, cond: log_r.view(-1, 1))
    losses = method._student_loss(Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3)), roles)
    losses.total.backward()
    weighted = roles.student.net.x0.grad.clone()
    assert abs(losses.terms["weight_max"].item() - (math.exp(2) / log_r.exp().mean()).item()) < 1e-4
    roles.student.net.x0.grad = None
    dmd = DMD2()
    dmd.setup(roles, None)
    dmd.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3)), roles).total.backward()
    h = log_r.exp() / log_r.exp().mean()
    assert torch.allclose(weighted, roles.student.net.x0.grad * h.view(-1, 1), rtol=1e-5, atol=1e-9)
