"""``cd``'s ``teacher_clip_x0``: the teacher's ODE step with x0 clipped, as its clipped sampler."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.methods.cd import CD, ode_step


class ConstantX0(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, t, cond=None, **extra):
        return torch.full_like(x, self.value)


def _pair(value: float, solver: str, **options):
    process = make_process("vp_discrete", schedule="squaredcos_cap_v2", T=100)
    method = CD(CD.Options(num_steps=10, teacher_solver=solver, target_ema=0.0, **options))
    roles = Roles({"teacher": Denoiser(ConstantX0(value), process, "x0"),
                   "student": Denoiser(ConstantX0(0.0), process, "x0")})
    method.setup(roles, None)
    g = torch.Generator().manual_seed(1)
    batch = Batch(noise=torch.randn(32, 3, generator=g), x0=torch.rand(32, 3, generator=g) * 2 - 1,
                  generator=torch.Generator().manual_seed(0))
    return method.pair(batch, roles), process


@pytest.mark.parametrize("solver", ["ddim", "euler", "heun"])
def test_clipped_teacher_step_is_the_step_of_the_clipped_prediction(solver):
    # a teacher predicting x0 = 3 clipped to 1 takes exactly the step of a teacher predicting 1
    clipped, process = _pair(3.0, solver, teacher_clip_x0=1.0)
    reference, _ = _pair(1.0, solver)
    torch.testing.assert_close(clipped.x_hi, reference.x_hi)
    torch.testing.assert_close(clipped.x_lo, reference.x_lo)
    # and without the option the step follows the prediction as is
    raw, _ = _pair(3.0, solver)
    ones = Denoiser(ConstantX0(3.0), process, "x0")
    expected = ode_step(lambda x, t, target: ones.predict(x, t, target=target), process, raw.x_hi, raw.t_hi, raw.t_lo, solver)
    torch.testing.assert_close(raw.x_lo, expected)


def test_bad_bound_fails():
    with pytest.raises(DistillError, match="teacher_clip_x0 must be a positive bound"):
        CD(CD.Options(teacher_clip_x0=-1.0))
