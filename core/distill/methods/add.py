"""Adversarial diffusion distillation (``add``).

Sauer et al. 2023, "Adversarial Diffusion Distillation" (ADD, arXiv:2311.17042). The student
(initialised from the teacher) denoises noised real data in one call at one of its sampling
times and is trained with an adversarial term plus a score-distillation term (ADD eq. 1):

    L = L_adv^G(x_hat) + lambda L_distill(x_hat),     x_hat = G_theta(x_s, s)

The adversarial part and the discriminator (heads on a feature network's layers, real data
against student samples, hinge loss with R1 on real data) are in
:mod:`distill.methods.adversarial`. The distillation term re-noises the student's sample with
fresh noise at a teacher time ``t ~ U[distill_t_lo, distill_t_hi]`` and regresses the sample onto
the frozen teacher's denoised prediction of it (ADD eq. 4):

    L_distill = E_{t, eps'} [ c(t) d(x_hat, stopgrad(x0_teacher(alpha_t x_hat + sigma_t eps', t))) ]

with ``d`` one of :mod:`distill.methods.distances` (ADD: squared L2) and the weighting

    exponential:  c(t) = alpha_t               (ADD's choice: noisier teacher targets count less)
    sds:          c(t) = alpha_t sigma_t / 2   (the gradient of SDS, Poole et al. 2022, eq. 3,
                                                with w(t) = sigma_t^2; derived below)
    none:         c(t) = 1.

Why ``sds``: with ``x_t = alpha_t x + sigma_t eps'`` the teacher's noise prediction is
``eps_teacher = (x_t - alpha_t x0_teacher) / sigma_t``, so ``eps_teacher - eps' =
alpha_t / sigma_t (x - x0_teacher)``. With ``d = mse`` (mean over the D dimensions) the gradient
of ``c(t) d`` is ``2 c(t) (x - x0_teacher) / D = alpha_t sigma_t (x - x0_teacher) / D =
sigma_t^2 (eps_teacher - eps') / D``: SDS's ``w(t) (eps_teacher - eps')`` up to the constant 1/D.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.errors import DistillError
from distill.method import Batch, Roles
from distill.methods.adversarial import AdversarialDistillation
from distill.methods.distances import get_distance

WEIGHTINGS = ("exponential", "sds", "none")


def distill_weight_c(process, t: torch.Tensor, weighting: str) -> torch.Tensor:
    """``c(t)`` of ADD eq. 4 for times ``t`` [B] (see the module docstring), float64."""
    t = t.to(torch.float64)
    if weighting == "exponential":
        return process.alpha(t)
    if weighting == "sds":
        return process.alpha(t) * process.sigma(t) / 2
    if weighting == "none":
        return torch.ones_like(t)
    raise DistillError(f"add: unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


class ADD(AdversarialDistillation):
    name = "add"
    description = "adversarial diffusion distillation: discriminator on real data plus score distillation (Sauer et al. 2023)"
    paper = "arXiv:2311.17042"
    needs_data = True  # the discriminator's real samples and the student's noised inputs

    @dataclass
    class Options(AdversarialDistillation.Options):
        r1_weight: float = 1.0e-5  # ADD's gamma
        disc_t_hi: float = 0.1  # the discriminator sees lightly noised samples (ADD: clean images)
        distill_weight: float = 2.5  # lambda of ADD eq. 1
        weighting: str = "exponential"  # c(t) of ADD eq. 4: exponential | sds | none
        distance: str = "mse"  # d of ADD eq. 4: mse | pseudo_huber | l1
        distill_t_lo: float = 0.02  # the teacher's times, as fractions of [t_min, t_max]
        distill_t_hi: float = 0.98
        guidance: float | None = None  # CFG scale of the teacher's target (None: unguided)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        if o.weighting not in WEIGHTINGS:
            raise DistillError(f"add: weighting must be one of {', '.join(WEIGHTINGS)}; got {o.weighting!r}")
        if o.distill_weight < 0:
            raise DistillError(f"add: distill_weight must be >= 0; got {o.distill_weight}")
        if not 0.0 <= o.distill_t_lo <= o.distill_t_hi <= 1.0:
            raise DistillError(f"add: need 0 <= distill_t_lo <= distill_t_hi <= 1; got {o.distill_t_lo} and {o.distill_t_hi}")
        self.distance = get_distance(o.distance)

    def _real(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        if batch.x0 is None:
            raise DistillError("add needs real data (its discriminator's real samples and the student's inputs), "
                               "but the batch has none; use a modality with data")
        return batch.x0, batch.cond

    def _distill_times(self, batch: Batch) -> torch.Tensor:
        o, p = self.options, self.process
        frac = o.distill_t_lo + (o.distill_t_hi - o.distill_t_lo) * batch.rand(batch.size)
        return (p.t_min + frac * (p.t_max - p.t_min)).to(batch.noise.dtype)

    def _student_terms(self, x_hat: torch.Tensor, cond: Any, batch: Batch, roles: Roles):
        """ADD eq. 4, drawn after the adversarial term's draws: teacher times, then the noise eps'."""
        o = self.options
        if o.distill_weight == 0:
            return None, {}
        t = self._distill_times(batch)
        with torch.no_grad():
            x_t = self.process.add_noise(x_hat.detach(), batch.randn_like(x_hat), t)
            if o.guidance is not None:
                target = roles.teacher.guided(x_t, t, cond, batch.null_cond, o.guidance)
            else:
                target = roles.teacher.predict(x_t, t, cond)
        c = distill_weight_c(self.process, t, o.weighting).to(x_hat.dtype)
        distill = (c * self.distance(x_hat, target)).mean()
        return o.distill_weight * distill, {"distill": distill}
