"""vsd: the student's gradient is w(t) alpha^2 / sigma (x0_critic - x0_teacher) (VSD eq. 9 in x0 form)."""
from __future__ import annotations

import pytest
import torch

from distill import Batch, Roles, make_process
from distill.errors import DistillError
from distill.methods.vsd import VSD, vsd_gradient
from tests.methods.test_dmd2 import make_roles


def _replayed(method, process, roles, seed):
    replay = Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(seed))
    t = method._times(replay)
    x0 = roles.student.net.x0.detach()
    x_t = process.add_noise(x0, replay.randn_like(x0), t)
    return x0, t, roles.teacher.predict(x_t, t), roles.critic.predict(x_t, t)


@pytest.mark.parametrize("weighting", ["sds", "uniform"])
def test_student_gradient_is_the_weighted_score_difference(weighting):
    process = make_process("flow")
    roles = make_roles(process)
    method = VSD(VSD.Options(weighting=weighting))
    method.setup(roles, None)
    method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3)), roles).total.backward()
    x0, t, real, fake = _replayed(method, process, roles, 3)
    # flow: alpha = 1 - t, sigma = t; w = sigma^2 (sds) or 1 (uniform)
    alpha, sigma = (1 - t).view(-1, 1), t.view(-1, 1)
    weight = alpha ** 2 * sigma if weighting == "sds" else alpha ** 2 / sigma
    expected = weight * (fake - real) / x0.numel()  # L = 1/2 mean((x0 - sg(x0 - g))^2)
    assert torch.allclose(roles.student.net.x0.grad, expected.float(), rtol=1e-5, atol=1e-9)


def test_gradient_moves_samples_toward_the_teacher_and_vanishes_at_a_match():
    process = make_process("flow")
    roles = make_roles(process)  # the student's modes sit at 0.7x the teacher's radius
    method = VSD()
    method.setup(roles, None)
    method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(5)), roles).total.backward()
    x0, step = roles.student.net.x0.detach(), -roles.student.net.x0.grad
    assert (step * x0).sum(dim=1).mean() > 0  # descent pushes the samples outwards, toward radius 2
    same = Roles({"teacher": roles.teacher, "critic": roles.teacher, "student": roles.student})
    roles.student.net.x0.grad = None
    method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(5)), same).total.backward()
    assert roles.student.net.x0.grad.abs().max() == 0


def test_options_are_checked():
    with pytest.raises(DistillError, match="unknown weighting"):
        VSD(VSD.Options(weighting="snr"))
    with pytest.raises(DistillError, match="normalize"):
        VSD(VSD.Options(normalize=True))
    assert not VSD().needs_data  # data-free
    g = vsd_gradient(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.5, 1.0]), torch.tensor([0.5, 0.1]))
    assert torch.allclose(g[:, 0], torch.tensor([0.125, 0.1]))
