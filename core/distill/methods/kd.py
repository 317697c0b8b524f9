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
from rich.progress import Progress

from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.distances import get_distance
from distill.process import sampling_schedule
from distill.samplers import get_sampler


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
        self.cache: tuple[torch.Tensor, torch.Tensor, object] | None = None

    def roles(self) -> list[Role]:
        return [Role("student", lr=self.options.lr)]

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.modality = modality
        if self.options.pairs == "cached":
            self.cache = self._build_cache(roles, modality)

    def _teacher_endpoint(self, teacher, x_T: torch.Tensor, cond) -> torch.Tensor:
        timesteps = sampling_schedule(teacher.process, self.options.teacher_steps, kind=self.options.schedule)
        with torch.no_grad():
            return get_sampler(self.options.teacher_sampler)(teacher, x_T, cond, timesteps=timesteps).x0

    def _prior(self, noise: torch.Tensor) -> torch.Tensor:
        sigma_max = self.process.sigma(torch.tensor(self.process.t_max, dtype=torch.float64))
        return noise * sigma_max.to(noise.dtype)

    def _build_cache(self, roles: Roles, modality):
        """Solve the teacher ODE once for ``cache_size`` noises (fixed seed 0)."""
        generator = torch.Generator().manual_seed(0)
        n, chunk = self.options.cache_size, self.options.cache_batch
        noises, targets, conds = [], [], []
        with Progress(transient=True) as progress:
            task = progress.add_task("kd: teacher pairs", total=n)
            for start in range(0, n, chunk):
                size = min(chunk, n - start)
                noise = torch.randn((size, *modality.sample_shape), generator=generator)
                cond = modality.sample_condition(size, generator)
                noises.append(noise)
                targets.append(self._teacher_endpoint(roles.teacher, self._prior(noise), cond))
                conds.append(cond)
                progress.update(task, advance=size)
        cond = None if conds[0] is None else torch.cat(conds)
        return torch.cat(noises), torch.cat(targets), cond

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        if self.cache is not None:
            noises, targets, conds = self.cache
            index = batch.randint(noises.shape[0], batch.size).cpu()
            noise = noises[index].to(batch.device)
            target = targets[index].to(batch.device)
            cond = None if conds is None else conds[index].to(batch.device)
        else:
            noise, cond = batch.noise, batch.cond
            target = self._teacher_endpoint(roles.teacher, self._prior(noise), cond)
        x_T = self._prior(noise)
        t = torch.full((batch.size,), self.process.t_max, device=batch.device)
        prediction = roles.student.predict(x_T, t, cond)
        distance = self.distance(prediction, target).mean()
        return Losses(total=distance, terms={"distance": distance})
