"""dmd: DMD2's distribution-matching gradient plus lambda_reg times the regression on cached teacher pairs."""
from __future__ import annotations

import pytest
import torch

from distill import Batch, make_process
from distill.errors import DistillError
from distill.methods.dmd import DMD
from distill.methods.dmd2 import DMD2
from distill.modality import Modality
from tests.methods.test_dmd2 import make_roles


class Plane(Modality):
    name = "plane"

    @property
    def sample_shape(self):
        return (2,)


def _setup(weight: float):
    process = make_process("flow")
    roles = make_roles(process)
    method = DMD(DMD.Options(regression_weight=weight, cache_size=64, cache_batch=16, teacher_steps=4))
    method.setup(roles, Plane())
    return process, roles, method


def test_pairs_are_teacher_ode_endpoints():
    _, roles, method = _setup(0.25)
    pairs = method.pairs
    assert len(pairs) == 64 and pairs.cond is None
    again = method.ode.endpoint(roles.teacher, pairs.noise[:8], None)
    assert torch.allclose(pairs.x0[:8], again, atol=1e-6)


def test_gradient_is_dm_plus_weighted_regression():
    """With a free-parameter student (output = x0 whatever the input), the regression's
    gradient is lambda * 2 (x0 - y_ref) / N on top of the dmd2 gradient."""
    weight = 0.25
    _, roles, method = _setup(weight)
    batch = Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(3))
    losses = method.loss("student", batch, roles)
    assert set(losses.terms) == {"dm", "regression"}
    losses.total.backward()
    grad_total = roles.student.net.x0.grad.clone()

    # dmd2 alone from the same generator state gives the distribution-matching part.
    roles.student.net.x0.grad = None
    dm_only = DMD2()
    dm_only.setup(roles, None)
    dm_only.loss("student", Batch(noise=batch.noise, generator=torch.Generator().manual_seed(3)), roles).total.backward()
    grad_dm = roles.student.net.x0.grad.clone()

    # Replay the draws of the dm term (times, noise), then the pair indices.
    replay = Batch(noise=batch.noise, generator=torch.Generator().manual_seed(3))
    x0 = roles.student.net.x0.detach()
    method._times(replay)
    replay.randn_like(x0)
    index = replay.randint(len(method.pairs), 32)
    y_ref = method.pairs.x0[index]
    assert torch.allclose(losses.terms["regression"], (x0 - y_ref).pow(2).mean(), rtol=1e-5)
    expected = grad_dm + weight * 2 * (x0 - y_ref) / x0.numel()
    assert torch.allclose(grad_total, expected, rtol=1e-4, atol=1e-7)


def test_zero_weight_is_dmd2_without_pairs():
    _, roles, method = _setup(0.0)
    assert method.pairs is None
    losses = method.loss("student", Batch(noise=torch.randn(32, 2), generator=torch.Generator().manual_seed(1)), roles)
    assert set(losses.terms) == {"dm"}


def test_options_and_errors():
    method = DMD()
    assert method.options.critic_updates == 1 and method.options.regression_weight == 0.25
    assert method.phases(0) == ["critic", "student"] and DMD.max_student_steps == 1
    with pytest.raises(DistillError, match="regression_weight"):
        DMD(DMD.Options(regression_weight=-1.0))
    with pytest.raises(DistillError, match="distance"):
        DMD(DMD.Options(distance="lpips"))
