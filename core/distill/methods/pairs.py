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

from distill.cache import cached_tensors, fingerprint
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
        """Solve ``size`` pairs from seed :data:`PAIR_SEED`, ``chunk`` at a time, with a progress bar.

        The noise and conditioning are redrawn (cheap); the endpoints come from the on-disk
        cache (:mod:`distill.cache`) when the same teacher solved the same inputs the same
        way before, so runs that share a teacher and ODE settings solve their pairs once.
        """
        generator = torch.Generator().manual_seed(PAIR_SEED)
        noises, conds = [], []
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            noises.append(torch.randn((n, *modality.sample_shape), generator=generator))
            conds.append(modality.sample_condition(n, generator))
        cond = None if conds[0] is None else torch.cat(conds)
        noise = torch.cat(noises)

        def solve() -> dict[str, torch.Tensor]:
            targets, device = [], _device(teacher)
            with Progress(transient=True) as progress:
                task = progress.add_task(f"{label}: teacher pairs", total=size)
                for z, c in zip(noises, conds):
                    targets.append(self.endpoint(teacher, z.to(device), _to(c, device)).cpu())
                    progress.update(task, advance=z.shape[0])
            return {"x0": torch.cat(targets)}

        if cond is not None and not isinstance(cond, torch.Tensor):
            return TeacherPairs(noise, solve()["x0"], cond)  # only tensor conditioning has a cache key
        key = fingerprint("teacher-pairs", teacher_identity(teacher, noise, cond), self.sampler, self.steps, self.schedule,
                          noise, cond)
        x0 = cached_tensors("teacher-pairs", key, solve)["x0"]
        return TeacherPairs(noise, x0.to(noise.dtype), cond)


def teacher_identity(teacher: Denoiser, noise: torch.Tensor, cond: Any) -> list[Any]:
    """What a teacher's outputs depend on, for :func:`distill.cache.fingerprint`: its weights and
    buffers, network class, process, prediction type and time input, and its answers on the
    first few of ``noise`` at mid time (a teacher may keep state outside its state dict).
    The answers are rounded to 1e-3 so that thread counts, which change the last bits of a
    convolution, do not change the key."""
    n = min(4, noise.shape[0])
    device = _device(teacher)
    process = teacher.process
    t = torch.full((n,), 0.5 * (process.t_min + process.t_max), dtype=noise.dtype, device=device)
    c = cond[:n].to(device) if isinstance(cond, torch.Tensor) else cond
    with torch.no_grad():
        x_t = noise[:n].to(device) * process.sigma(t.double()).to(noise.dtype).view(-1, *[1] * (noise.dim() - 1))
        answer = teacher.raw(x_t, t, c).float().cpu()
    return [teacher, type(teacher.net).__qualname__, repr(process), teacher.prediction, repr(teacher.time_input),
            torch.round(answer * 1000) + 0.0]  # + 0.0 turns -0.0 into 0.0 (same value, other bytes)


def _device(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _to(cond: Any, device: torch.device) -> Any:
    return cond.to(device) if isinstance(cond, torch.Tensor) else cond
