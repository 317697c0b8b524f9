"""Progressive distillation (``progressive``).

Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models"
(arXiv:2202.00512). A deterministic DDIM sampler with ``2N`` steps (the teacher) is
distilled into one with ``N`` steps (the student): one student DDIM step from ``t`` to
``t''`` must land where two teacher DDIM steps ``t -> t' -> t''`` land. Then the student
becomes the next round's teacher and the step count halves again, ``32 -> 16 -> ... -> 1``.

DDIM in x0 form for any ``x_t = alpha_t x0 + sigma_t eps`` (Song et al. 2021, eq. 12 with
eta = 0):

    ddim(x_t, x0; t -> s) = alpha_s x0 + sigma_s (x_t - alpha_t x0) / sigma_t

Training (Salimans & Ho, Algorithm 2): ``x ~ data``, ``t = t_i`` on the student's grid,
``x_t = alpha_t x + sigma_t eps``; the teacher runs ``x_t' = ddim(x_t, x0_T(x_t, t); t -> t')``
and ``x_t'' = ddim(x_t', x0_T(x_t', t'); t' -> t'')``, and the student's x0 target is the
one whose single DDIM step ``t -> t''`` reaches ``x_t''``:

    x_tilde = (x_t'' - (sigma_t'' / sigma_t) x_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

The last interval of a grid ends at ``t_min``, where every sampler of this repository returns
the x0 prediction (:mod:`distill.samplers`); there the target is the teacher's second x0
prediction ``x0_T(x_t', t')``, which is the formula above at ``sigma_t'' = 0, alpha_t'' = 1``.
The loss is ``w(t) ||x0_S(x_t, t) - x_tilde||^2`` with the paper's 'truncated SNR' weight
``max(SNR(t), 1)`` (Sec. 4: the larger of the x-space and eps-space errors) or ``SNR + 1``.
All of it goes through the Denoiser's x0, so flow, vp, edm and trig teachers work alike.

Rounds are scheduled inside one run from the step counter alone: round ``k`` covers steps
``[k R, (k+1) R)`` (``R = steps_per_round``), its student takes ``N_k = start_steps / 2^(k+1)``
steps, and the last round (``N = student.steps``) continues until the run ends. The round's
teacher is the original teacher in round 0 and, from round 1 on, the role ``round_teacher``: a
frozen copy the method fills with the student's weights on the first step of each round. It is
a trained role only so that it lives in the checkpoint (no phase updates it), hence a resumed
run holds the right teacher: resuming inside a round restores it, resuming exactly at a round's
first step copies the restored student again, which is the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.pairs import TeacherODE, TeacherPairs
from distill.process import SCHEDULES, expand_like, sampling_schedule
from distill.samplers import SampleResult, ddim

WEIGHTINGS = ("truncated_snr", "snr_plus_one", "constant")


# --- pure math -------------------------------------------------------------------------------
def _coef(process: Any, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    return expand_like(process.alpha(t), x), expand_like(process.sigma(t), x)


def ddim_step(process: Any, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step ``t -> s`` given the x0 prediction (Song et al. 2021, eq. 12, eta = 0).

    ``x_s = alpha_s x0 + sigma_s (x_t - alpha_t x0) / sigma_t``, computed in float64 and
    returned in ``x_t``'s dtype; ``t, s``: ``[B]`` process times.
    """
    a_t, s_t = _coef(process, t, x_t)
    a_s, s_s = _coef(process, s, x_t)
    x, d = x_t.to(torch.float64), x0.to(torch.float64)
    return (a_s * d + s_s * (x - a_t * d) / s_t).to(x_t.dtype)


def ddim_x0(process: Any, x_t: torch.Tensor, x_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The x0 whose DDIM step ``t -> s`` from ``x_t`` lands on ``x_s`` (Salimans & Ho 2022, Algorithm 2).

    ``x_tilde = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)``; the
    denominator is positive because the SNR decreases in t (s < t).
    """
    a_t, s_t = _coef(process, t, x_t)
    a_s, s_s = _coef(process, s, x_t)
    ratio = s_s / s_t
    return ((x_s.to(torch.float64) - ratio * x_t.to(torch.float64)) / (a_s - ratio * a_t)).to(x_t.dtype)


def snr_weight(snr: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample weight of the x0 error (Salimans & Ho 2022, Sec. 4).

    ``truncated_snr``: ``max(SNR, 1)`` = the larger of the x-error and the eps-error;
    ``snr_plus_one``: ``SNR + 1`` (the v-error); ``constant``: 1.
    """
    if kind == "truncated_snr":
        return snr.clamp_min(1.0)
    if kind == "snr_plus_one":
        return snr + 1.0
    if kind == "constant":
        return torch.ones_like(snr)
    raise DistillError(f"unknown weighting {kind!r}; use one of {', '.join(WEIGHTINGS)}")


@torch.no_grad()
def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """``dst <- src`` in place, parameter by parameter and buffer by buffer.

    In place keeps ``dst``'s identity (its optimiser, its sharding): the frozen copies of
    ``progressive`` and ``reflow`` are roles built as copies of the student, so the two
    modules have the same parameters in the same order.
    """
    dst_p, src_p = list(dst.parameters()), list(src.parameters())
    dst_b, src_b = list(dst.buffers()), list(src.buffers())
    if len(dst_p) != len(src_p) or len(dst_b) != len(src_b):
        raise DistillError(
            f"cannot copy weights between different networks ({len(src_p)} -> {len(dst_p)} parameters); "
            "the frozen copy must be built from the student (Role init='student')"
        )
    for d, s in zip(dst_p + dst_b, src_p + src_b):
        d.copy_(s.detach().to(d.dtype))


# --- the round plan ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Round:
    """Round ``index``: a student of ``student_steps`` DDIM steps learns from a teacher of twice as many,
    from distillation step ``first_step`` on."""

    index: int
    student_steps: int
    first_step: int

    @property
    def teacher_steps(self) -> int:
        return 2 * self.student_steps


def round_plan(start_steps: int, final_steps: int, steps_per_round: int) -> list[Round]:
    """``start_steps -> start_steps/2 -> ... -> final_steps``: one :class:`Round` per halving."""
    if final_steps < 1 or start_steps < 2 * final_steps or start_steps % final_steps:
        raise DistillError(
            f"progressive: start_steps={start_steps} must be final_steps * 2^k with k >= 1 "
            f"(final_steps = student.steps = {final_steps}); e.g. start_steps=32 with student.steps 1, 2, 4 or 8"
        )
    ratio = start_steps // final_steps
    if ratio & (ratio - 1):
        raise DistillError(
            f"progressive: start_steps / student.steps = {ratio} is not a power of two; every round halves "
            f"the step count, so use start_steps = {final_steps * 2 ** max(1, ratio.bit_length() - 1)} or similar"
        )
    rounds, n, k = [], start_steps // 2, 0
    while n >= final_steps:
        rounds.append(Round(k, n, k * steps_per_round))
        n, k = n // 2, k + 1
    return rounds


@dataclass(frozen=True)
class RoundTimes:
    """Per student interval i of a round: its start ``t``, the teacher's midpoint and its end (float64 ``[N]``)."""

    t: torch.Tensor
    mid: torch.Tensor
    next: torch.Tensor


class Progressive(Method):
    name = "progressive"
    description = "progressive distillation: one student DDIM step matches two teacher steps; rounds halve the steps (Salimans & Ho 2022)"
    paper = "arXiv:2202.00512"
    kinds = frozenset({"continuous"})

    @dataclass
    class Options:
        start_steps: int = 32  # DDIM steps of the original teacher (round 0's student takes half)
        steps_per_round: int = 2000  # distillation steps per halving; the last round runs to the end
        schedule: str = "uniform"  # time grid of every round (uniform | karras | logsnr); the grids nest
        weighting: str = "truncated_snr"  # truncated_snr | snr_plus_one | constant (Sec. 4)
        inputs: str = "data"  # x0 that is noised to x_t: data (the paper) | teacher (cached ODE samples: data-free)
        cache_size: int = 16384  # inputs=teacher: teacher samples solved at set-up
        cache_batch: int = 1024
        teacher_sampler: str = "heun"  # inputs=teacher: the ODE solver that makes them
        teacher_steps: int = 18
        guidance: float | None = None  # CFG scale of the original teacher (round 0); later teachers have it built in
        teacher_weights: str = "student"  # what becomes the next round's teacher: student | ema (resets the student to it)
        student_prediction: str | None = None  # prediction type of a fresh student (None: the teacher's)
        lr: float = 1e-4

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.steps_per_round < 1:
            raise DistillError(f"progressive: steps_per_round must be at least 1, got {o.steps_per_round}")
        if o.schedule not in SCHEDULES:
            raise DistillError(f"progressive: unknown schedule {o.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if o.weighting not in WEIGHTINGS:
            raise DistillError(f"progressive: unknown weighting {o.weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        if o.inputs not in ("data", "teacher"):
            raise DistillError(f"progressive: inputs must be 'data' or 'teacher' (cached teacher samples), got {o.inputs!r}")
        if o.teacher_weights not in ("student", "ema"):
            raise DistillError(f"progressive: teacher_weights must be 'student' or 'ema', got {o.teacher_weights!r}")
        self.student_steps = 1  # the final step count; the engine sets it from student.steps
        self.ode = TeacherODE(o.teacher_sampler, o.teacher_steps, "uniform")
        self.cache: TeacherPairs | None = None
        self._loaded_round = 0  # the round whose teacher round_teacher holds, when known (see _begin_round)

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.options.inputs == "data"

    # --- rounds ---------------------------------------------------------------------------
    @property
    def plan(self) -> list[Round]:
        o = self.options
        return round_plan(o.start_steps, self.student_steps, o.steps_per_round)

    def round_at(self, step: int) -> Round:
        """The round that distillation step ``step`` belongs to (a function of the step alone)."""
        plan = self.plan
        return plan[min(step // self.options.steps_per_round, len(plan) - 1)]

    def round_times(self, rnd: Round) -> RoundTimes:
        """Student grid ``t_0 > ... > t_N`` and the teacher's ``2N`` grid's odd points between them."""
        student = self.student_timesteps(rnd.student_steps)
        teacher = sampling_schedule(self.process, rnd.teacher_steps, kind=self.options.schedule)
        if not torch.allclose(teacher[::2], student, rtol=1e-9, atol=1e-12):  # uniform, karras, logsnr all nest
            raise DistillError(f"progressive: the {rnd.teacher_steps}-step {self.options.schedule} grid does not contain the {rnd.student_steps}-step one")
        return RoundTimes(student[:-1], teacher[1::2], student[1:])

    # --- roles --------------------------------------------------------------------------------
    def roles(self) -> list[Role]:
        o = self.options
        roles = [Role("student", lr=o.lr, prediction=o.student_prediction)]
        if len(self.plan) > 1:
            # Never updated by a phase: a trained role only so that the checkpoint holds it.
            roles.append(Role("round_teacher", init="student", lr=o.lr, grad_clip=None))
        return roles

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        plan = self.plan  # raises on a bad start_steps / student.steps pair
        if len(plan) > 1 and "round_teacher" not in roles:
            raise DistillError("progressive: several rounds need the 'round_teacher' role; build the roles after setting student_steps")
        if self.options.teacher_weights == "ema" and "student_ema" not in roles:
            raise DistillError("progressive: teacher_weights=ema needs the student EMA; set ema.half_life (or teacher_weights=student)")
        for rnd in plan:
            self.round_times(rnd)
        if self.options.inputs == "teacher":
            o = self.options
            self.cache = self.ode.cache(roles.teacher, modality, o.cache_size, o.cache_batch, "progressive")

    def _begin_round(self, rnd: Round, step: int, roles: Roles) -> None:
        """On the first step of round k >= 1: round_teacher <- the student (or its EMA).

        Any other step leaves round_teacher as the checkpoint restored it, so a resumed run
        and an uninterrupted one use the same teacher.
        """
        if rnd.index == 0 or step != rnd.first_step or self._loaded_round == rnd.index:
            return
        source = roles.student_ema if self.options.teacher_weights == "ema" else roles.student
        copy_weights(roles.round_teacher, source)
        if source is not roles.student:  # the paper starts each student from its teacher
            copy_weights(roles.student, source)
        self._loaded_round = rnd.index

    def round_teacher(self, roles: Roles, rnd: Round) -> Denoiser:
        if rnd.index == 0:
            return roles.teacher
        teacher = roles.round_teacher
        teacher.eval()  # a frozen copy: no dropout
        return teacher

    # --- loss ---------------------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        if self.cache is not None:
            pairs = self.cache.draw(batch)
            return pairs.x0, pairs.cond
        if batch.x0 is None:
            raise DistillError("progressive with inputs=data needs real data, but the batch has none; set method_args.inputs=teacher")
        return batch.x0, batch.cond

    def _teacher_x0(self, teacher: Denoiser, x: torch.Tensor, t: torch.Tensor, rnd: Round, cond, null_cond) -> torch.Tensor:
        t_in = t.to(device=x.device, dtype=x.dtype)
        if rnd.index == 0 and self.options.guidance is not None:
            return teacher.guided(x, t_in, cond, null_cond, self.options.guidance)
        return teacher.predict(x, t_in, cond)

    def target(self, teacher: Denoiser, x_t: torch.Tensor, index: torch.Tensor, rnd: Round, cond: Any = None,
               null_cond: Any = None) -> torch.Tensor:
        """The student's x0 target at ``(x_t, t_index)``: two teacher DDIM steps, then the DDIM inversion.

        ``index`` (Long ``[B]``, CPU) picks each sample's interval of the round's student grid;
        on the last interval the target is the teacher's x0 at the midpoint (module docstring).
        """
        p, times = self.process, self.round_times(rnd)
        t, mid, nxt = times.t[index], times.mid[index], times.next[index]
        x_mid = ddim_step(p, x_t, self._teacher_x0(teacher, x_t, t, rnd, cond, null_cond), t, mid)
        x0_mid = self._teacher_x0(teacher, x_mid, mid, rnd, cond, null_cond)
        x_next = ddim_step(p, x_mid, x0_mid, mid, nxt)
        last = expand_like((index == rnd.student_steps - 1).to(x_t.device), x_t)
        return torch.where(last, x0_mid, ddim_x0(p, x_t, x_next, t, nxt))

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        rnd = self.round_at(batch.step)
        self._begin_round(rnd, batch.step, roles)
        teacher = self.round_teacher(roles, rnd)
        x0, cond = self._inputs(batch)
        index = batch.randint(rnd.student_steps, x0.shape[0]).cpu()
        t = self.round_times(rnd).t[index]
        x_t = self.process.add_noise(x0, batch.randn_like(x0), t.to(x0.device))
        with torch.no_grad():
            target = self.target(teacher, x_t, index, rnd, cond, batch.null_cond)
        prediction = roles.student.predict(x_t, t.to(device=x0.device, dtype=x0.dtype), cond)
        error = (prediction - target).pow(2).flatten(1).mean(dim=1)
        weight = snr_weight(self.process.snr(t), self.options.weighting).to(error)
        total = (weight * error).mean()
        return Losses(total=total, terms={"x0_mse": error.mean().detach(), "round": torch.tensor(float(rnd.index))})

    # --- the student sampler ---------------------------------------------------------------------
    def student_timesteps(self, steps: int) -> torch.Tensor:
        return sampling_schedule(self.process, steps, kind=self.options.schedule)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        return dict(super().sampler_spec(steps), name="ddim")

    def sample(
        self,
        student: Denoiser,
        noise: torch.Tensor,
        cond: Any = None,
        steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """Deterministic DDIM on the ``steps``-step grid, the sampler every round trains for.

        The student is trained for ``student.steps`` (the last round) and, before that, for
        the counts of the earlier rounds; other counts run but were never trained.
        """
        p = student.process
        x_T = noise * p.sigma(torch.tensor(p.t_max, dtype=torch.float64)).to(noise.dtype)
        timesteps = sampling_schedule(p, steps, kind=self.options.schedule)
        return ddim(student, x_T, cond, timesteps=timesteps, generator=generator)
