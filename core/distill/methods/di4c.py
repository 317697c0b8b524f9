"""Di4C: distillation of discrete diffusion through dimensional correlations (``di4c``).

Hayakawa et al. 2024, "Distillation of Discrete Diffusion through Dimensional Correlations"
(arXiv:2410.08709). A denoiser that predicts each position independently (a product of
per-position distributions) cannot take a large step: tokens revealed in the same step are
drawn independently although in the data they depend on each other. Di4C's student is a
*mixture* of product distributions over a latent variable ``lambda`` (their sec. 3):

    p_S(x_s | x_t) = E_{lambda ~ U(0, 1)} [ prod_l p_S(x_s^l | x_t, lambda) ],

which, through the shared ``lambda``, represents correlations between positions that no
product can. Here ``lambda`` is an extra scalar input of the reference network (zero-initialised,
:mod:`distill.nets.embeddings`), so the student starts as an exact copy of the teacher, and
``p_S(x_s^l | x_t, lambda)`` is the ancestral posterior of the process given the student's x0
distribution at ``lambda`` (``process.posterior``).

Distillation loss (their eq. 7, the "distillation" term, with the mixture likelihood
estimated by Monte Carlo over ``R`` draws of lambda): on the student's grid ``t -> s``
(``s = t - 1/N``), ``x ~ data``, ``x_t ~ q(x_t | x)``, and ``x_s`` drawn from the teacher's
*many-step* ancestral sampler from ``t`` to ``s`` (``teacher_steps / N`` small steps, which
reveal tokens one after another and so keep their dependence):

    L = - E [ log (1/R) sum_r prod_l p_S(x_s^l | x_t, lambda_r) ] / L_seq,

a cross-entropy of the teacher's multi-step transition under the one-step mixture student
(the log of the Monte-Carlo mean is a lower bound of the mixture's log-likelihood, tight as R
grows; IWAE, Burda et al. 2016). For the masked process only the positions the teacher
revealed carry a term that depends on the student, ``log p_S(x0 = x_s^l | x_t, lambda)``; the
keep/reveal probabilities are fixed by the schedule.

Sampling: ancestral on the ``N``-step grid, with a fresh ``lambda`` per sequence at each step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.discrete_diffusion import discrete_process, token_times
from distill.process import MaskedProcess, sampling_schedule
from distill.samplers import SampleResult, check_token_start

LATENT = "lam"


def mixture_log_likelihood(token_logp: torch.Tensor) -> torch.Tensor:
    """``log (1/R) sum_r exp(sum_l token_logp[r, b, l])`` -> [B]; ``token_logp``: [R, B, L]
    per-component, per-position log-probabilities (0 where a position carries no term)."""
    per_component = token_logp.sum(-1)  # [R, B]
    return torch.logsumexp(per_component, dim=0) - math.log(token_logp.shape[0])


def transition_log_probs(process: Any, x_t: torch.Tensor, x0_probs: torch.Tensor, x_s: torch.Tensor,
                         t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log p(x_s^l | x_t, x0_probs) per position [B, L] under the process's ancestral posterior."""
    post = process.posterior(x_t, x0_probs.double(), t.double().cpu(), s.double().cpu())
    return post.gather(-1, x_s.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30).log().float()


def mixture_ancestral(student: Denoiser, x_T: torch.Tensor, cond: Any = None, *, timesteps: torch.Tensor,
                      generator: torch.Generator | None = None) -> SampleResult:
    """Ancestral sampling with a fresh latent ``lambda ~ U(0, 1)`` per sequence at every step."""
    ts = check_token_start("di4c", student, x_T, timesteps)
    x = x_T
    for i in range(ts.numel() - 1):
        lam = torch.rand(x.shape[0], generator=generator).to(x.device)
        t = ts[i].to(device=x.device, dtype=torch.float32).expand(x.shape[0])
        p0 = student.predict(x, t, cond, target="x0", **{LATENT: lam})
        x = student.process.step(x, p0, ts[i], ts[i + 1], generator=generator if x.device.type == "cpu" else None)
    return SampleResult(x0=x, nfe=ts.numel() - 1)


class Di4C(Method):
    name = "di4c"
    description = "Di4C: a mixture student (latent lambda) learns the teacher's multi-step transitions, capturing correlations between positions"
    paper = "arXiv:2410.08709"
    kinds = frozenset({"discrete"})
    needs_data = True

    @dataclass
    class Options:
        teacher_steps: int = 64  # ancestral steps of the teacher over [0, 1]; each student step spans teacher_steps / N
        components: int = 8  # R: lambda draws per sequence in the Monte-Carlo mixture likelihood
        lr: float = 3e-4

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.components < 1:
            raise DistillError(f"di4c: components must be at least 1, got {self.options.components}")
        self.student_steps = 1

    def roles(self) -> list[Role]:
        return [Role("student", init="teacher", lr=self.options.lr, extra_inputs=(LATENT,))]

    def setup(self, roles: Roles, modality: Any) -> None:
        super().setup(roles, modality)
        discrete_process(self.process, self.name)
        if self.options.teacher_steps % self.student_steps:
            raise DistillError(
                f"di4c: teacher_steps={self.options.teacher_steps} must be a multiple of student.steps={self.student_steps}"
            )

    def teacher_transition(self, teacher: Denoiser, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: Any,
                           generator: torch.Generator | None) -> torch.Tensor:
        """x_s from ``x_t``: ``teacher_steps / N`` ancestral teacher steps per sequence, ``t[b] -> s[b]``."""
        sub = self.options.teacher_steps // self.student_steps
        x = x_t
        for j in range(sub):
            a = t + (s - t) * (j / sub)
            b = t + (s - t) * ((j + 1) / sub)
            probs = teacher.predict(x, a.float(), cond, target="x0")
            x = self.process.step(x, probs, a.cpu(), b.cpu(), generator=generator if x.device.type == "cpu" else None)
        return x

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        p, x0 = self.process, batch.x0
        n, R = self.student_steps, self.options.components
        k = batch.randint(n, x0.shape[0]).cpu()  # interval k: t = 1 - k/N -> s = 1 - (k+1)/N
        t = (1 - k.double() / n).to(x0.device)
        s = (1 - (k.double() + 1) / n).to(x0.device)
        x_t = p.corrupt(x0.cpu(), t.cpu(), generator=batch.generator).to(x0.device)
        with torch.no_grad():
            x_s = self.teacher_transition(roles.teacher, x_t, t, s, batch.cond, batch.generator)
        B = x0.shape[0]
        lam = torch.rand(R * B, generator=batch.generator).to(x0.device)
        rep = lambda v: v.repeat(R, *([1] * (v.ndim - 1))) if v is not None else None  # noqa: E731
        cond = rep(batch.cond) if isinstance(batch.cond, torch.Tensor) else batch.cond
        logp = roles.student.predict(rep(x_t), rep(t).float(), cond, target="logits", **{LATENT: lam})
        if isinstance(p, MaskedProcess):
            # Only revealed positions depend on the student: log p_S(x0 = x_s^l | x_t, lambda).
            revealed = ((x_t == p.mask_id) & (x_s != p.mask_id)).repeat(R, 1)
            picked = logp.gather(-1, rep(x_s).clamp(max=p.vocab_size - 1).unsqueeze(-1)).squeeze(-1)
            token_logp = torch.where(revealed, picked.clamp_min(-1e4), torch.zeros_like(picked))
        else:
            token_logp = transition_log_probs(p, rep(x_t), logp.exp(), rep(x_s), rep(t), rep(s))
        ll = mixture_log_likelihood(token_logp.reshape(R, B, -1))
        total = -ll.mean() / x0.shape[1]
        return Losses(total=total, terms={"mixture_nll_per_token": total.detach()})

    # --- the student sampler ---------------------------------------------------------------------
    def student_timesteps(self, steps: int) -> torch.Tensor:
        return token_times(self.process, steps)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        return dict(super().sampler_spec(steps), name="method", latent=LATENT)

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 1,
               generator: torch.Generator | None = None) -> SampleResult:
        x_T = discrete_process(student.process, self.name).prior_from_noise(noise)
        return mixture_ancestral(student, x_T, cond, timesteps=sampling_schedule(student.process, steps),
                                 generator=generator)
