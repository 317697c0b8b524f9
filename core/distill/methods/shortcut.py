"""Shortcut-model distillation (``shortcut``): a step-size-conditioned velocity from the teacher.

Frans et al. 2024, "One Step Diffusion via Shortcut Models" (arXiv:2410.12557). The network
``s(x_t, t, d)`` is the *shortcut*: the average velocity over a step of size ``d``, so that
``x_{t-d} = x_t - d s(x_t, t, d)`` (eq. 2, in this repository's time, which increases towards
noise; the paper's runs the other way). Two losses train it (eq. 5):

* flow matching at ``d = 0``: ``s(x_t, t, 0) = v(x_t, t)``, here the *teacher's* velocity (its
  ``"flow"`` prediction, optionally classifier-free guided) instead of the conditional ``x1 - x0``;
* self-consistency: two half steps make one full step,

      s(x_t, t, 2d) = sg( (s(x_t, t, d) + s(x'_{t-d}, t - d, d)) / 2 ),
      x'_{t-d} = x_t - d s(x_t, t, d),                                                  (eq. 4)

  with the right-hand side from the EMA of the student (the paper's bootstrap targets use its
  EMA weights; here the engine's ``student_ema``, so ``ema.half_life`` sets the target's lag).

Step sizes live on a dyadic grid of ``[t_min, t_max]``: with ``M = finest_steps`` the full steps
``2d`` of the bootstrap samples are ``1, 1/2, ..., 2/M`` of the span (equally many samples per
level, as in the paper's implementation) and ``t`` sits on the grid of its level, so every
bootstrap chain ends inside the span. The finest step ``1/M`` is the flow-matching one: its
network input is ``d = 0`` (the paper queries ``d = 0`` there), and with ``teacher_base`` the two
half steps of the finest level are Euler steps of the teacher itself (data-free targets from the
teacher) rather than the student's ``d = 0`` prediction. A ``bootstrap_fraction`` of the batch
(paper: 1/4) is self-consistency, the rest flow matching.

``x_t`` is a point of the teacher's marginal (noised cached teacher samples, or real data), as in
:mod:`distill.methods.meanflow`. The network's extra input ``d`` is the step as a fraction of
``t_max - t_min``; its output is read as a velocity through the Denoiser (``"flow"``: the raw
output of fresh students, the converted prediction of teacher-initialised ones).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.meanflow import MarginalPoints, draw_times, jump_sample, take, teacher_velocity
from distill.methods.pairs import TeacherODE
from distill.process import make_time_sampler
from distill.samplers import SampleResult

BOOTSTRAP_MODELS = ("ema", "student")


def dyadic_levels(n: int, levels: int) -> torch.Tensor:
    """Level ``j`` of each of ``n`` bootstrap samples (full step ``2^-j``), equally many per level."""
    return torch.arange(n) % levels


class Shortcut(Method):
    name = "shortcut"
    description = "step-size-conditioned shortcut model with self-consistency targets (Frans et al. 2024)"
    paper = "arXiv:2410.12557"
    kinds = frozenset({"continuous"})
    step_agnostic = True  # any-step sampling of one trained student

    @dataclass
    class Options:
        bootstrap_fraction: float = 0.25  # share of the batch with self-consistency targets (paper: 1/4)
        finest_steps: int = 128  # M: the smallest step is 1/M of [t_min, t_max] (a power of 2; paper: 128)
        time_sampler: str = "uniform"  # t of the flow-matching samples
        bootstrap_model: str = "ema"  # ema (the engine's student EMA, as the paper) | student
        teacher_base: bool = True  # the finest level's half steps are teacher Euler steps
        x0_source: str = "teacher"  # teacher: noised cached teacher ODE samples (data-free) | data
        cache_size: int = 65536
        cache_batch: int = 4096
        teacher_sampler: str = "heun"
        teacher_steps: int = 18
        schedule: str = "uniform"
        guidance: float | None = None  # CFG scale of the teacher velocity (None: unguided)
        lr: float = 1.0e-4

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if not 0.0 <= o.bootstrap_fraction <= 1.0:
            raise DistillError(f"shortcut: bootstrap_fraction must be in [0, 1]; got {o.bootstrap_fraction}")
        m = int(o.finest_steps)
        if m < 2 or m & (m - 1):
            raise DistillError(f"shortcut: finest_steps must be a power of 2 and at least 2 (paper: 128); got {o.finest_steps}")
        if o.bootstrap_model not in BOOTSTRAP_MODELS:
            raise DistillError(f"shortcut: bootstrap_model must be one of {', '.join(BOOTSTRAP_MODELS)}; got {o.bootstrap_model!r}")
        self.levels = int(math.log2(m))  # full-step levels 1, 1/2, ..., 2/M
        self.time_sampler = make_time_sampler(o.time_sampler)
        ode = TeacherODE(o.teacher_sampler, o.teacher_steps, o.schedule)
        self.points = MarginalPoints(o.x0_source, ode, o.cache_size, o.cache_batch, "shortcut")

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.options.x0_source == "data"

    def roles(self) -> list[Role]:
        # A fresh student predicts the velocity, so s is its raw output.
        return [Role("student", lr=self.options.lr, prediction="flow", extra_inputs=("d",))]

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.points.setup(roles.teacher, modality)

    # --- the shortcut ----------------------------------------------------------------
    @property
    def span(self) -> float:
        return self.process.t_max - self.process.t_min

    def step_input(self, step: torch.Tensor) -> torch.Tensor:
        """The network's ``d`` for a step of ``step`` (a fraction of the span): 0 at or below the finest 1/M."""
        finest = 1.0 / self.options.finest_steps
        return torch.where(step <= finest * (1 + 1e-6), torch.zeros_like(step), step)

    def shortcut(self, model: Denoiser, x_t: torch.Tensor, t: torch.Tensor, step: torch.Tensor, cond: Any) -> torch.Tensor:
        """``s(x_t, t, d)``: the model's velocity prediction for a step of ``step`` (fraction of the span)."""
        return model.predict(x_t, t, cond, target="flow", d=self.step_input(step))

    def bootstrap_model(self, roles: Roles) -> Denoiser:
        if self.options.bootstrap_model == "student":
            return roles.student
        if "student_ema" not in roles:
            raise DistillError(
                "shortcut: bootstrap_model=ema takes the self-consistency targets from the student's EMA, but this "
                "run keeps none; set ema.half_life (e.g. 200) or method_args.bootstrap_model=student"
            )
        return roles.student_ema

    def half_step_velocity(self, roles: Roles, x: torch.Tensor, t: torch.Tensor, half: torch.Tensor, cond: Any,
                           null_cond: Any) -> torch.Tensor:
        """Target-side ``s(x, t, half)``; at the finest level the teacher's velocity when ``teacher_base``."""
        s = self.shortcut(self.bootstrap_model(roles), x, t, half, cond)
        if not self.options.teacher_base:
            return s
        finest = self.step_input(half) == 0
        if bool(finest.any()):
            idx = finest.nonzero().squeeze(1)
            v = teacher_velocity(roles.teacher, x[idx], t[idx], take(cond, idx), take(null_cond, idx), self.options.guidance)
            s = s.index_copy(0, idx, v.to(s.dtype))
        return s

    def bootstrap_target(self, roles: Roles, x_t: torch.Tensor, t: torch.Tensor, full: torch.Tensor, cond: Any,
                         null_cond: Any = None) -> torch.Tensor:
        """Self-consistency target of ``s(x_t, t, full)`` (eq. 4): the mean of two half-step shortcuts,
        the second one taken from where the first one lands. No gradient flows into it."""
        with torch.no_grad():
            half = full / 2
            s1 = self.half_step_velocity(roles, x_t, t, half, cond, null_cond)
            gap = (half * self.span).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
            s2 = self.half_step_velocity(roles, x_t - gap * s1, t - half * self.span, half, cond, null_cond)
            return (s1 + s2) / 2

    def bootstrap_times(self, batch: Batch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, full)`` of ``n`` bootstrap samples: full steps ``2^-j`` per :func:`dyadic_levels` and
        ``t = t_max - k 2^-j T`` with ``k`` uniform in ``{0, ..., 2^j - 1}`` (so ``t - full T >= t_min``)."""
        p = self.process
        level = dyadic_levels(n, self.levels).to(torch.float64)
        sections = torch.pow(2.0, level)
        k = torch.floor(batch.rand(n, device=torch.device("cpu")).to(torch.float64) * sections).clamp(max=sections - 1)
        full = 1.0 / sections
        t = p.t_max - k * full * self.span
        return t.to(torch.float32).to(batch.device), full.to(torch.float32).to(batch.device)

    # --- loss --------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        o, p, student = self.options, self.process, roles.student
        x0, cond = self.points.draw(batch)
        n = x0.shape[0]
        n_boot = int(round(o.bootstrap_fraction * n))
        boot, flow = slice(0, n_boot), slice(n_boot, n)
        t_boot, full = self.bootstrap_times(batch, n_boot)
        t_flow = draw_times(self.time_sampler, batch, p, n - n_boot)
        t = torch.cat([t_boot, t_flow])
        step = torch.cat([full, torch.zeros_like(t_flow)])
        x_t = p.add_noise(x0, batch.randn_like(x0), t)
        targets = []
        with torch.no_grad():
            if n_boot > 0:
                targets.append(self.bootstrap_target(roles, x_t[boot], t_boot, full, take(cond, boot),
                                                     take(batch.null_cond, boot)))
            if n_boot < n:
                targets.append(teacher_velocity(roles.teacher, x_t[flow], t_flow, take(cond, flow),
                                                take(batch.null_cond, flow), o.guidance))
        target = torch.cat(targets)
        prediction = self.shortcut(student, x_t, t, step, cond)
        per_sample = (prediction - target).flatten(1).pow(2).mean(dim=1)
        total = per_sample.mean()
        terms = {}
        if n_boot > 0:
            terms["bootstrap"] = per_sample[boot].detach().mean()
        if n_boot < n:
            terms["flow"] = per_sample[flow].detach().mean()
        return Losses(total=total, terms=terms)

    # --- sampler ------------------------------------------------------------------------------
    def sampler_spec(self, steps: int) -> dict[str, Any]:
        """The network takes extra inputs (see :meth:`sample`); no generic sampler reproduces it."""
        return {"name": "method", "method": self.name, "steps": steps}

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 1,
               generator: torch.Generator | None = None) -> SampleResult:
        """``steps`` shortcut steps of size ``d = 1/steps`` (eq. 2; the paper's Algorithm 2).
        Any budget works; powers of two up to ``finest_steps`` are the trained ones, and budgets of
        ``finest_steps`` or more are Euler steps of the learnt velocity (``d = 0``). Deterministic."""
        if self.process is None:
            self.process = student.process
        span = self.span
        return jump_sample(lambda x, r, t: self.shortcut(student, x, t, (t - r) / span, cond), student.process, noise, steps)
