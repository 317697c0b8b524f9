"""sid: SiD's generator loss (eq. 23) with gradients through both networks' inputs."""
from __future__ import annotations

import torch

from distill import Batch, Roles, make_process
from distill.methods.dmd2 import DMD2
from distill.methods.sid import SiD, sid_loss
from tests.methods.test_dmd2 import make_roles


def test_loss_value_is_eq_23_over_the_normaliser():
    process = make_process("flow")
    roles = make_roles(process)
    method = SiD(SiD.Options(alpha=1.2))
    method.setup(roles, None)
    losses = method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3)), roles)
    replay = Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3))
    t = method._times(replay)
    x_g = roles.student.net.x0.detach()
    x_t = process.add_noise(x_g, replay.randn_like(x_g), t)
    real, fake = roles.teacher.predict(x_t, t), roles.critic.predict(x_t, t)
    per = ((real - fake) * ((real - x_g) - 1.2 * (real - fake))).mean(dim=1) / (x_g - real).abs().mean(dim=1)
    assert torch.allclose(losses.terms["sid"], per.mean(), rtol=1e-5)
    assert set(losses.terms) == {"sid"}


def test_gradient_reaches_the_networks_inputs_and_differs_from_dmd():
    """SiD differentiates through f_phi(x_t) and f_psi(x_t); DMD stops the gradient there."""
    process = make_process("flow")
    roles = make_roles(process)
    method = SiD()
    method.setup(roles, None)
    method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(4)), roles).total.backward()
    sid_grad = roles.student.net.x0.grad.clone()
    x0 = roles.student.net.x0.detach()
    assert (-sid_grad * x0).sum(dim=1).mean() > 0  # descent moves the samples outward, to the teacher's radius
    # Through frozen networks: stop the gradient at their inputs and it changes.
    roles.student.net.x0.grad = None
    x_g = roles.student.net.x0
    replay = Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(4))
    t = method._times(replay)
    x_t = process.add_noise(x_g, replay.randn_like(x_g), t).detach()
    sid_loss(x_g, roles.teacher.predict(x_t, t), roles.critic.predict(x_t, t), 1.2).mean().backward()
    assert not torch.allclose(roles.student.net.x0.grad, sid_grad, rtol=1e-3)
    roles.student.net.x0.grad = None
    dmd = DMD2()
    dmd.setup(roles, None)
    dmd.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(4)), roles).total.backward()
    assert not torch.allclose(roles.student.net.x0.grad, sid_grad, rtol=1e-2)


def test_loss_and_gradient_vanish_when_the_critic_is_the_teacher():
    process = make_process("flow")
    roles = make_roles(process)
    same = Roles({"teacher": roles.teacher, "critic": roles.teacher, "student": roles.student})
    method = SiD()
    method.setup(same, None)
    losses = method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(1)), same)
    losses.total.backward()
    assert losses.total.item() == 0
    # d(f_phi - f_psi)/dx_t cancels between the two backward paths up to float32 rounding
    assert roles.student.net.x0.grad.abs().max() < 1e-7
