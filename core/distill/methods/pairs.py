"""Teacher noise-sample pairs: the deterministic ODE map ``z -> ODE_teacher(sigma_max z)``.

Regression-based methods learn this map directly (``kd``, Luhman & Luhman 2021) or use
it as a regulariser (``dmd``, Yin et al. 2023, eq. 9). Solving the teacher ODE costs
its full NFE per sample, so the pairs are solved once at set-up from a fixed seed and
drawn at random afterwards, or solved on the fly from each batch's own noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from rich.progress import Progress

from distill.denoiser import Denoiser
from distill.method import Batch
from distill.process import sampling_schedule
from distill.samplers import get_sampler

PAIR_SEED = 0  # the cache is a function of the teacher and the options only (resume rebuilds it)


@dataclass
class TeacherPairs:
    """``noise`` (standard normal, the student's input before scaling by sigma_max),
    ``x0`` = the teacher's ODE endpoint from that noise, and the conditioning used."""

    noise: torch.Tensor
    x0: torch.Tensor
    cond: Any = None

    def __len__(self) -> int:
        return self.noise.shape[0]

    def draw(self, batch: Batch, n: int | None = None) -> "TeacherPairs":
        """``n`` (default ``batch.size``) random pairs on the batch's device, from its generator."""
        index = batch.randint(len(self), n or batch.size).cpu()
        cond = None if self.cond is None else self.cond[index].to(batch.device)
        return TeacherPairs(self.noise[index].to(batch.device), self.x0[index].to(batch.device), cond)


@dataclass
class TeacherODE:
    """How the teacher solves its ODE for a pair: sampler name, steps, time schedule."""

    sampler: str = "heun"
    steps: int = 18
    schedule: str = "uniform"

    def prior(self, teacher: Denoiser, noise: torch.Tensor) -> torch.Tensor:
        process = teacher.process
        sigma_max = process.sigma(torch.tensor(process.t_max, dtype=torch.float64))
        return noise * sigma_max.to(noise.dtype)

    def endpoint(self, teacher: Denoiser, noise: torch.Tensor, cond: Any) -> torch.Tensor:
        timesteps = sampling_schedule(teacher.process, self.steps, kind=self.schedule)
        with torch.no_grad():
            return get_sampler(self.sampler)(teacher, self.prior(teacher, noise), cond, timesteps=timesteps).x0

    def pairs(self, teacher: Denoiser, noise: torch.Tensor, cond: Any) -> TeacherPairs:
        return TeacherPairs(noise, self.endpoint(teacher, noise, cond), cond)

    def cache(self, teacher: Denoiser, modality, size: int, chunk: int, label: str) -> TeacherPairs:
        """Solve ``size`` pairs from seed :data:`PAIR_SEED`, ``chunk`` at a time, with a progress bar."""
        generator = torch.Generator().manual_seed(PAIR_SEED)
        noises, targets, conds = [], [], []
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{label}: teacher pairs", total=size)
            for start in range(0, size, chunk):
                n = min(chunk, size - start)
                noise = torch.randn((n, *modality.sample_shape), generator=generator)
                cond = modality.sample_condition(n, generator)
                noises.append(noise)
                targets.append(self.endpoint(teacher, noise, cond))
                conds.append(cond)
                progress.update(task, advance=n)
        cond = None if conds[0] is None else torch.cat(conds)
        return TeacherPairs(torch.cat(noises), torch.cat(targets), cond)
