"""kd: the target is the teacher ODE endpoint from the same noise; cache and on-the-fly agree."""
from __future__ import annotations

import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process, sampling_schedule
from distill.methods.kd import KD
from distill.modality import Modality
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet
from distill.samplers import heun


class Echo(nn.Module):
    """Student that returns its input: prediction == x_T, so the loss is |x_T - ODE(x_T)|^2."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond=None, **extra):
        return x * self.scale


class Plane(Modality):
    name = "plane"

    @property
    def sample_shape(self):
        return (2,)


def test_on_the_fly_target_is_teacher_heun_endpoint():
    process = make_process("flow")
    teacher = Denoiser(ExactNet(GaussianMixture.ring(k=4, radius=2.0, std=0.2), process), process, "x0")
    roles = Roles({"teacher": teacher, "student": Denoiser(Echo(), process, "x0")})
    method = KD(KD.Options(pairs="on_the_fly", teacher_steps=6))
    method.setup(roles, Plane())
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    loss = method.loss("student", Batch(noise=noise, generator=torch.Generator().manual_seed(1)), roles).total
    endpoint = heun(teacher, noise * process.sigma(torch.tensor(1.0)), timesteps=sampling_schedule(process, 6)).x0
    assert torch.allclose(loss, (noise - endpoint).pow(2).mean(), rtol=1e-5)


def test_cache_holds_teacher_pairs():
    process = make_process("flow")
    teacher = Denoiser(ExactNet(GaussianMixture.ring(k=4, radius=2.0, std=0.2), process), process, "x0")
    roles = Roles({"teacher": teacher, "student": Denoiser(Echo(), process, "x0")})
    method = KD(KD.Options(pairs="cached", cache_size=100, cache_batch=40, teacher_steps=4))
    method.setup(roles, Plane())
    noises, targets, cond = method.cache.noise, method.cache.x0, method.cache.cond
    assert noises.shape == targets.shape == (100, 2) and cond is None
    again = heun(teacher, noises[:10], timesteps=sampling_schedule(process, 4)).x0
    assert torch.allclose(targets[:10], again, atol=1e-6)
