"""The template method: the smallest complete distill Method.

A one-step student, initialised from the teacher, regresses the teacher's x0
prediction at pure noise (t = t_max):

    L(theta) = w * E_{eps ~ N(0, I)} || x0_theta(x_T, t_max) - x0_teacher(x_T, t_max) ||^2,
    x_T = sigma(t_max) * eps.

It is a *template*, not a good distillation method (the teacher's one-step
guess at pure noise is close to the data mean); it shows the contract: class
attributes, an options dataclass, roles, and a loss that is pure tensor code
(no optimiser, no Lightning, no device logic) written only against the
Denoiser's canonical x0 prediction, so it works with any continuous modality.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill import Batch, Losses, Method, Role, Roles


class TemplateMethod(Method):
    """One-step student regressing the teacher's x0 guess at t_max (an example)."""

    name = "template"
    kinds = frozenset({"continuous"})
    description = "example plugin method: one-step student matches the teacher's x0 at t_max"

    @dataclass
    class Options:
        """Options of the template method (unknown config keys fail with a suggestion)."""

        student_steps: int = 1
        weight: float = 1.0

    def roles(self) -> list[Role]:
        return [Role("student", init="teacher")]

    def phases(self, step: int) -> list[str]:
        return ["student"]

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        teacher, student = roles.teacher, roles.student
        process = teacher.process
        noise = batch.noise
        t = torch.full((batch.size,), float(process.t_max), dtype=noise.dtype, device=noise.device)
        sigma = process.sigma(t).reshape(-1, *([1] * (noise.dim() - 1)))
        x_T = sigma * noise
        with torch.no_grad():
            target = teacher.predict(x_T, t, batch.cond, target="x0")
        pred = student.predict(x_T, t, batch.cond, target="x0")
        mse = torch.mean((pred - target) ** 2)
        return Losses(total=self.options.weight * mse, terms={"mse": mse})
