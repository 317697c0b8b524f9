"""Policies for :func:`distill_policy.rollout.rollout` from a teacher or a distilled student.

``teacher_act`` samples the diffusion policy with a solver of :mod:`distill.samplers`: DDPM
ancestral sampling is ``ddim`` with ``eta=1`` (Song, Meng & Ermon 2021, eq. 16: ``eta = 1`` is
the DDPM posterior step), DDIM is ``eta=0``. ``student_act`` runs a trained student with its
method's own sampler (one step, or a multistep chain).
"""
from __future__ import annotations

from typing import Any

import torch

from distill.denoiser import Denoiser
from distill.process import sampling_schedule
from distill.samplers import get_sampler
from distill_policy.rollout import Act


def policy_normalizer(denoiser: Denoiser):
    """The normaliser a policy network carries (its statistics travel in its safetensors)."""
    from distill.errors import DistillError

    normalizer = getattr(denoiser.net, "normalizer", None)
    if normalizer is None:
        raise DistillError(
            f"{type(denoiser.net).__name__} carries no normaliser; policies are distill_policy networks "
            "(PolicyUNet, PolicyTransformer) whose normaliser is saved with their weights"
        )
    return normalizer


def teacher_act(teacher: Denoiser, sampler: str = "ddim", steps: int = 100, schedule: str = "uniform", **options: Any) -> Act:
    """The teacher sampled with ``sampler`` over ``steps`` steps (``options``: e.g. ``eta``)."""
    process = teacher.process
    timesteps = sampling_schedule(process, int(steps), kind=schedule)
    sigma_max = float(process.sigma(torch.tensor(process.t_max, dtype=torch.float64)))
    fn = get_sampler(sampler)

    def act(cond: Any, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return fn(teacher, noise * sigma_max, cond, timesteps=timesteps, generator=generator, **options).x0

    return act


def student_act(method: Any, student: Denoiser, steps: int = 1) -> Act:
    """A trained student with the sampler its method trained it for."""

    def act(cond: Any, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return method.sample(student, noise, cond, steps=int(steps), generator=generator).x0

    return act
