"""Self-distillation through time (``sdtt``) for masked discrete diffusion.

Deschenaux & Gulcehre 2024, "Beyond Autoregression: Fast LLMs via Self-Distillation Through
Time" (arXiv:2410.21035). A masked diffusion model sampled with ``2N`` ancestral steps (the
teacher) is distilled into one sampled with ``N`` (the student): the student's x0 distribution
at ``(z_t, t)`` must reproduce what two teacher steps ``t -> m = t - dt/2 -> s = t - dt``
produce. Rounds halve the step count (``64 -> 32 -> ... -> student.steps``); each round's
teacher is the previous round's student (round 0: the original teacher).

Targets (our reading of SDTT, sec. 3: the paper's code was not consulted). On the student's grid (``dt = 1/N``), ``x ~ data``,
``t = k dt``, ``z_t ~ q(z_t | x)``. The teacher predicts ``p1 = x_T(z_t, t)``, draws
``z_m ~ p(z_m | z_t, p1)`` (the ancestral step), predicts ``p2 = x_T(z_m, m)``. A position
``l`` masked in ``z_t`` gets the target distribution of the step that decided it:

    target^l = p1^l   if z_m^l is unmasked (the first teacher step decided it),
               p2^l   otherwise (decided in the second step, or still masked),

and the student's ``x_S(z_t, t)^l`` is fitted to it on every masked position with a
divergence ``D``: KL-backward ``KL(x_S || target)`` (the paper's best; mode-seeking), KL-forward
``KL(target || x_S)``, or the total variation distance. Why two steps matter: the
marginal of one position over two teacher steps mixes ``p1`` with ``p2``, which already sees
the tokens the first step revealed; a student fitted to it encodes part of the teacher's
dependence between positions in its single step.

Rounds are scheduled from the step counter (as in ``progressive``): round ``k`` covers steps
``[k R, (k+1) R)``, its student takes ``N_k = teacher_steps / 2^(k+1)`` steps, and the last
round (``N = student.steps``) runs to the end. The round teacher is the role ``round_teacher``
(a trained role only so that checkpoints hold it; no phase updates it), refilled with the
student (or its EMA) on each round's first step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.discrete_diffusion import discrete_process, sample_tokens, token_times
from distill.methods.progressive import Round, copy_weights, round_plan
from distill.process import MaskedProcess
from distill.samplers import SampleResult

DIVERGENCES = ("kl_backward", "kl_forward", "tvd")
LOG_FLOOR = -30.0  # log-probabilities below this count as this (a target's exact zeros stay finite)


# --- pure math -------------------------------------------------------------------------------
def sdtt_target(p1: torch.Tensor, p2: torch.Tensor, z_m: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Per-position target: ``p1`` where the first teacher step unmasked the token, else ``p2``."""
    decided_first = (z_m != mask_id).unsqueeze(-1)
    return torch.where(decided_first, p1, p2)


def divergence(kind: str, student_logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position divergence between distributions over the last axis.

    ``kl_backward``: KL(student || target) = sum_x s(x) (log s(x) - log q(x));
    ``kl_forward``:  KL(target || student) = sum_x q(x) (log q(x) - log s(x));
    ``tvd``: 1/2 sum_x |s(x) - q(x)|.
    """
    s_logp = student_logp.clamp_min(LOG_FLOOR)
    q_logp = target.clamp_min(1e-30).log().clamp_min(LOG_FLOOR)
    if kind == "kl_backward":
        return (s_logp.exp() * (s_logp - q_logp)).sum(-1)
    if kind == "kl_forward":
        return (target * (q_logp - s_logp)).sum(-1)
    if kind == "tvd":
        return 0.5 * (s_logp.exp() - target).abs().sum(-1)
    raise DistillError(f"sdtt: unknown divergence {kind!r}; use one of {', '.join(DIVERGENCES)}")


class SDTT(Method):
    name = "sdtt"
    description = "self-distillation through time: one student step matches two teacher steps of a masked diffusion model; rounds halve the steps"
    paper = "arXiv:2410.21035"
    kinds = frozenset({"discrete"})
    needs_data = True

    @dataclass
    class Options:
        teacher_steps: int = 64  # ancestral steps of the original teacher (round 0's student takes half)
        steps_per_round: int = 500  # distillation steps per halving; the last round runs to the end
        divergence: str = "kl_backward"  # kl_backward (paper default) | kl_forward | tvd
        teacher_weights: str = "ema"  # next round's teacher: ema (the paper) | student
        lr: float = 3e-4

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.divergence not in DIVERGENCES:
            raise DistillError(f"sdtt: unknown divergence {o.divergence!r}; use one of {', '.join(DIVERGENCES)}")
        if o.steps_per_round < 1:
            raise DistillError(f"sdtt: steps_per_round must be at least 1, got {o.steps_per_round}")
        if o.teacher_weights not in ("ema", "student"):
            raise DistillError(f"sdtt: teacher_weights must be 'ema' or 'student', got {o.teacher_weights!r}")
        self.student_steps = 1
        self._loaded_round = 0

    @property
    def plan(self) -> list[Round]:
        try:
            return round_plan(self.options.teacher_steps, self.student_steps, self.options.steps_per_round)
        except DistillError as err:
            raise DistillError(str(err).replace("progressive: start_steps", "sdtt: teacher_steps")) from None

    def round_at(self, step: int) -> Round:
        plan = self.plan
        return plan[min(step // self.options.steps_per_round, len(plan) - 1)]

    def roles(self) -> list[Role]:
        roles = [Role("student", init="teacher", lr=self.options.lr)]
        if len(self.plan) > 1:
            roles.append(Role("round_teacher", init="student", lr=self.options.lr, grad_clip=None))
        return roles

    def setup(self, roles: Roles, modality: Any) -> None:
        super().setup(roles, modality)
        if not isinstance(discrete_process(self.process, self.name), MaskedProcess):
            raise DistillError("sdtt distils masked (absorbing) diffusion; the teacher's process is uniform")
        if self.options.teacher_weights == "ema" and "student_ema" not in roles and len(self.plan) > 1:
            raise DistillError("sdtt: teacher_weights=ema needs the student EMA; set ema.half_life (or teacher_weights=student)")

    def _begin_round(self, rnd: Round, step: int, roles: Roles) -> None:
        if rnd.index == 0 or step != rnd.first_step or self._loaded_round == rnd.index:
            return
        source = roles.student_ema if self.options.teacher_weights == "ema" else roles.student
        copy_weights(roles.round_teacher, source)
        if source is not roles.student:  # each round's student starts from its teacher
            copy_weights(roles.student, source)
        self._loaded_round = rnd.index

    def round_teacher(self, roles: Roles, rnd: Round) -> Denoiser:
        if rnd.index == 0:
            return roles.teacher
        return roles.round_teacher.eval()

    # --- loss ---------------------------------------------------------------------------------
    def targets(self, teacher: Denoiser, z_t: torch.Tensor, t: torch.Tensor, dt: float, cond: Any,
                generator: torch.Generator | None) -> torch.Tensor:
        """The SDTT target [B, L, V] of two teacher ancestral steps ``t -> t - dt/2 -> t - dt``."""
        p = self.process
        m = (t.double() - dt / 2).clamp_min(0.0)
        p1 = teacher.predict(z_t, t, cond, target="x0")
        z_m = _step_each(p, z_t, p1, t.double(), m, generator)
        p2 = teacher.predict(z_m, m.float(), cond, target="x0")
        return sdtt_target(p1, p2, z_m, p.mask_id)

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        rnd = self.round_at(batch.step)
        self._begin_round(rnd, batch.step, roles)
        teacher = self.round_teacher(roles, rnd)
        p, x0 = self.process, batch.x0
        n = rnd.student_steps
        k = batch.randint(n, x0.shape[0]).cpu() + 1  # t = k / N, k = 1 .. N
        t = (k.double() / n).float().to(x0.device)
        z_t = p.corrupt(x0.cpu(), t.cpu(), generator=batch.generator).to(x0.device)
        with torch.no_grad():
            target = self.targets(teacher, z_t, t, 1.0 / n, batch.cond, batch.generator)
        logp = roles.student.predict(z_t, t, batch.cond, target="logits")
        masked = z_t == p.mask_id
        per = divergence(self.options.divergence, logp[masked], target[masked])
        total = per.mean() if per.numel() else logp.sum() * 0.0
        return Losses(total=total, terms={self.options.divergence: total.detach(), "round": torch.tensor(float(rnd.index))})

    # --- the student sampler ---------------------------------------------------------------------
    def student_timesteps(self, steps: int) -> torch.Tensor:
        return token_times(self.process, steps)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        return dict(super().sampler_spec(steps), name="ancestral")

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 1,
               generator: torch.Generator | None = None) -> SampleResult:
        """Ancestral sampling with ``steps`` uniform steps, the sampler every round trains for."""
        return sample_tokens(student, noise, cond, token_times(student.process, steps), generator)


def _step_each(process: MaskedProcess, z_t: torch.Tensor, probs: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
    """One ancestral step per sequence with its own times ``t[b] -> s[b]`` (``process.step`` takes
    [B] times): an unmasked token stays, a masked one is revealed with probability
    (alpha_s - alpha_t) / (1 - alpha_t), drawn from ``probs``."""
    return process.step(z_t, probs, t.cpu(), s.cpu(), generator=generator if z_t.device.type == "cpu" else None)
