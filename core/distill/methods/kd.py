"""Knowledge distillation of the teacher's ODE map (``kd``).

Luhman & Luhman 2021, "Knowledge Distillation in Iterative Generative Models for
Improved Sampling Speed" (arXiv:2101.02388): a deterministic teacher sampler
defines a map ``x_T -> x0 = ODE_teacher(x_T)``; the student learns it by
regression from the same noise,

    L(theta) = E_{x_T ~ N(0, sigma_max^2 I)} d(G_theta(x_T), ODE_teacher(x_T)),     (eq. 4)

with ``G_theta(x_T) = student.predict(x_T, t_max)``. Pairs are produced on the fly
(every step solves the teacher ODE from that step's noise) or cached once at set-up
(``pairs: cached``; the student then draws random pairs from the cache).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.distances import get_distance
from distill.methods.pairs import TeacherODE, TeacherPairs


class KD(Method):
    name = "kd"
    description = "regress the teacher's deterministic ODE endpoint from the same noise (Luhman & Luhman 2021)"
    paper = "arXiv:2101.02388"
    kinds = frozenset({"continuous"})
    max_student_steps = 1

    @dataclass
    class Options:
        pairs: str = "cached"  # cached | on_the_fly
        cache_size: int = 65536
        cache_batch: int = 4096
        teacher_sampler: str = "heun"
        teacher_steps: int = 18
        schedule: str = "uniform"
        distance: str = "mse"  # mse | pseudo_huber | l1
        lr: float = 1e-3

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.pairs not in ("cached", "on_the_fly"):
            raise DistillError(f"kd: pairs must be 'cached' or 'on_the_fly', got {self.options.pairs!r}")
        self.distance = get_distance(self.options.distance)
        self.ode = TeacherODE(self.options.teacher_sampler, self.options.teacher_steps, self.options.schedule)
        self.cache: TeacherPairs | None = None

    def roles(self) -> list[Role]:
        return [Role("student", lr=self.options.lr)]

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.modality = modality
        if self.options.pairs == "cached":
            self.cache = self.ode.cache(roles.teacher, modality, self.options.cache_size, self.options.cache_batch, "kd")

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        if self.cache is not None:
            pairs = self.cache.draw(batch)
        else:
            pairs = self.ode.pairs(roles.teacher, batch.noise, batch.cond)
        x_T = self.ode.prior(roles.teacher, pairs.noise)
        t = torch.full((batch.size,), self.process.t_max, device=batch.device)
        prediction = roles.student.predict(x_T, t, pairs.cond)
        distance = self.distance(prediction, pairs.x0).mean()
        return Losses(total=distance, terms={"distance": distance})
