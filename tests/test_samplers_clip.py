"""``ddim(clip_x0=...)``: diffusers' clip_sample, x0 clipped before every step."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.process import make_process, sampling_schedule
from distill.samplers import ddim


class ConstantX0(nn.Module):
    """A network whose x0 prediction is ``value`` everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, t, cond=None):
        return torch.full_like(x, self.value)


def _run(value, steps=5, **options):
    process = make_process("vp_discrete", schedule="squaredcos_cap_v2", T=100)
    den = Denoiser(ConstantX0(value), process, prediction="x0")
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    return ddim(den, x_T, timesteps=sampling_schedule(process, steps), generator=torch.Generator().manual_seed(1), **options)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_x0_outside_the_box_is_clipped_at_every_step(eta):
    # x0 = 3 everywhere: unclipped DDIM returns 3; clipped to 1 it returns exactly 1 (the final
    # denoising is clipped too), and every intermediate state is built from x0 = 1
    assert torch.equal(_run(3.0, eta=eta).x0, torch.full((64, 3), 3.0))
    clipped = _run(3.0, eta=eta, clip_x0=1.0, return_trajectory=True)
    assert torch.equal(clipped.x0, torch.ones(64, 3))
    reference = _run(1.0, eta=eta, return_trajectory=True)  # the same run with x0 = 1 predicted
    for a, b in zip(clipped.trajectory, reference.trajectory):
        torch.testing.assert_close(a, b)


def test_x0_inside_the_box_is_untouched_and_bad_bounds_fail():
    torch.testing.assert_close(_run(0.4, eta=1.0, clip_x0=1.0).x0, _run(0.4, eta=1.0).x0)
    with pytest.raises(DistillError, match="clip_x0 must be a positive bound"):
        _run(0.4, clip_x0=0.0)
