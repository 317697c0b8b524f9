"""Distribution matching distillation with a regression loss (``dmd``).

Yin et al. 2023, "One-step Diffusion with Distribution Matching Distillation"
(DMD, arXiv:2311.18828). The student gets the distribution-matching gradient of
:mod:`distill.methods.dmd2` (DMD eq. 7-8) plus a regression loss on a fixed set of
the teacher's noise-sample pairs ``(z_ref, y_ref = ODE_teacher(z_ref))`` (eq. 9):

    L_G = L_DM + lambda_reg * E_(z_ref, y_ref) d(G(z_ref), y_ref)              (eq. 10)

The regression term anchors the student to the teacher's ODE map, which keeps the
mode-seeking reverse-KL gradient from dropping modes (DMD sec. 3.3; the paper uses
LPIPS for ``d`` and lambda_reg = 0.25; here ``d`` is any of
:mod:`distill.methods.distances`). The critic is DMD2's (one update per student
update by default, as in DMD); the GAN head of DMD2 stays available.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.errors import DistillError
from distill.method import Batch, Losses, Roles
from distill.methods.distances import get_distance
from distill.methods.dmd2 import DMD2
from distill.methods.pairs import TeacherODE, TeacherPairs


class DMD(DMD2):
    name = "dmd"
    description = "distribution matching plus regression on teacher noise-sample pairs (Yin et al. 2023)"
    paper = "arXiv:2311.18828"
    max_student_steps = 1

    @dataclass
    class Options(DMD2.Options):
        critic_updates: int = 1  # DMD alternates one critic and one student update
        regression_weight: float = 0.25  # lambda_reg of DMD eq. 10
        distance: str = "mse"  # d of eq. 9: mse | pseudo_huber | l1 (DMD uses LPIPS)
        regression_batch: int | None = None  # pairs per student update (None: the batch size)
        cache_size: int = 4096  # teacher pairs solved at set-up (the paper: 25k-500k images)
        cache_batch: int = 512
        teacher_sampler: str = "heun"
        teacher_steps: int = 18
        schedule: str = "uniform"

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.regression_weight < 0:
            raise DistillError("dmd: regression_weight must be >= 0")
        if o.cache_size < 1:
            raise DistillError("dmd: cache_size must be at least 1")
        self.distance = get_distance(o.distance)
        self.ode = TeacherODE(o.teacher_sampler, o.teacher_steps, o.schedule)
        self.pairs: TeacherPairs | None = None

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        if self.options.regression_weight > 0:
            self.pairs = self.ode.cache(roles.teacher, modality, self.options.cache_size, self.options.cache_batch, "dmd")

    def _regression(self, batch: Batch, roles: Roles) -> torch.Tensor:
        pairs = self.pairs.draw(batch, self.options.regression_batch)
        t = self.student_timesteps(1)[:1].to(batch.device, pairs.noise.dtype).expand(pairs.noise.shape[0])
        prediction = roles.student.predict(self.ode.prior(roles.teacher, pairs.noise), t, pairs.cond)
        return self.distance(prediction, pairs.x0).mean()

    def _student_loss(self, batch: Batch, roles: Roles) -> Losses:
        losses = super()._student_loss(batch, roles)
        if self.pairs is None:
            return losses
        regression = self._regression(batch, roles)
        terms = {**losses.terms, "regression": regression}
        return Losses(total=losses.total + self.options.regression_weight * regression, terms=terms)
