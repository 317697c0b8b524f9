"""Latent adversarial diffusion distillation (``ladd``).

Sauer et al. 2024, "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion
Distillation" (LADD, arXiv:2403.12015). ADD without the distillation term and without a
separate feature network: the student's only loss is adversarial,

    L_G = L_adv^G(x_hat),     x_hat = G_theta(x_s, s)

and the discriminator's heads read the frozen teacher's own features of *re-noised* samples,
``F_k(alpha_t x + sigma_t eps, t, cond)`` for real ``x`` and generated ``x_hat`` alike, at times
``t ~ pi(t)`` biased to high noise (LADD sec. 3.2: a logit-normal ``pi`` with location 1 and
scale 1 on flow time; the noise level moves the discriminator's attention from fine detail at
low noise to global structure at high noise). Heads sit on every feature layer by default
(LADD: one per transformer block). The generator's gradient passes through the frozen teacher.

The "real" samples are synthetic (LADD sec. 3.1): ``real: teacher`` solves the teacher's ODE
once at set-up for ``cache_size`` noises from a fixed seed (the pair cache of ``kd``,
:class:`distill.methods.pairs.TeacherODE`, shared on disk), so the method is data-free;
``real: data`` uses the modality's real data instead. The student's inputs are these samples
noised at its sampling times (:mod:`distill.methods.adversarial`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.errors import DistillError
from distill.method import Batch, Roles
from distill.methods.adversarial import AdversarialDistillation
from distill.methods.meanflow import MarginalPoints
from distill.methods.pairs import TeacherODE

REAL_SOURCES = ("teacher", "data")


class LADD(AdversarialDistillation):
    name = "ladd"
    description = "latent adversarial distillation: heads on the teacher's features of re-noised samples (Sauer et al. 2024)"
    paper = "arXiv:2403.12015"

    @dataclass
    class Options(AdversarialDistillation.Options):
        disc_time: str = "logit_normal"  # LADD sec. 3.2: re-noising biased to high noise
        disc_t_mean: float = 1.0
        disc_t_std: float = 1.0
        real: str = "teacher"  # teacher: cached teacher ODE samples (data-free) | data
        cache_size: int = 4096  # teacher samples solved at set-up (real=teacher)
        cache_batch: int = 512
        teacher_sampler: str = "heun"
        teacher_steps: int = 18
        schedule: str = "uniform"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        if o.real not in REAL_SOURCES:
            raise DistillError(f"ladd: real must be one of {', '.join(REAL_SOURCES)} (where the discriminator's real "
                               f"samples come from); got {o.real!r}")
        if o.real == "teacher" and (o.cache_size < 1 or o.cache_batch < 1):
            raise DistillError(f"ladd: cache_size and cache_batch must be at least 1 with real=teacher; "
                               f"got {o.cache_size} and {o.cache_batch}")
        ode = TeacherODE(o.teacher_sampler, o.teacher_steps, o.schedule)
        self.points = MarginalPoints(o.real, ode, o.cache_size, o.cache_batch, "ladd")

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.options.real == "data"

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.points.setup(roles.teacher, modality)

    def _real(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        return self.points.draw(batch)
