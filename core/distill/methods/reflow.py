"""Rectified-flow reflow on teacher couplings, with optional one-step distillation (``reflow``).

Liu, Gong & Liu 2022, "Flow Straight and Fast: Learning to Generate and Transfer Data with
Rectified Flow" (arXiv:2209.03003); Liu et al. 2023, "InstaFlow: One Step is Enough for
High-Quality Diffusion-Based Text-to-Image Generation" (arXiv:2309.06380).

**Reflow.** The teacher's deterministic ODE couples each noise ``z`` with a sample
``x1 = ODE_teacher(sigma_max z)`` (:mod:`distill.methods.pairs`). The student is trained
by flow matching on the straight interpolation between the two ends of each pair; in this
repository's flow convention (``x_t = alpha_t x0 + sigma_t eps`` with ``alpha = 1 - t``,
``sigma = t``, noise at ``t = 1``):

    x_t = (1 - t) x1 + t z,     L = E_{(z, x1), t} || v_theta(x_t, t) - (z - x1) ||^2      (Liu et al. eq. 1)

For any other Gaussian process the same pairs are placed on that process's path,
``x_t = alpha_t x1 + sigma_t z``, and the target is the process velocity
``alpha'_t x1 + sigma'_t z`` (or, with ``loss_space``, any other prediction of ``(x1, z)``).
Because the coupling is deterministic the new flow's paths cross less than the teacher's
independent coupling did, so the reflowed ODE is straighter (Liu et al., sec. 3: reflow does
not increase convex transport costs) and few Euler steps of it approach its own ODE map,
which reproduces the coupling's marginals.

**Distillation (InstaFlow's second stage).** With ``distill_from_step`` set, the run switches at
that step to regressing the one-step map, as ``kd`` does:

    L = E_z d( x0_theta(sigma_max z, t_max), target(z) )

where ``target`` is the reflowed model's own ODE endpoint (InstaFlow: distil the 2-rectified
flow; ``distill_target: reflow``, solved with ``distill_teacher_steps`` Euler steps of a
frozen copy made at the switch), or the teacher's coupling ``x1(z)`` itself
(``distill_target: pairs``). The frozen copy is the role ``reflow_teacher``: never updated by
a phase, trained only in the sense that the checkpoint holds it; the method fills it with the
student's weights on step ``distill_from_step``, so a resumed run derives the stage from the
step counter and finds the copy in its checkpoint.

**Student sampler.** Euler steps of the student's own velocity on a uniform grid (on the
flow process Euler and deterministic DDIM are the same update; ``sampler: ddim`` is the
process-agnostic form). After distillation the student is a one-step map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.distances import get_distance
from distill.methods.pairs import TeacherODE, TeacherPairs
from distill.methods.progressive import copy_weights
from distill.process import PREDICTIONS, SCHEDULES, make_time_sampler, sampling_schedule
from distill.samplers import SampleResult, get_sampler

STUDENT_SAMPLERS = ("euler", "ddim")


class Reflow(Method):
    name = "reflow"
    description = "rectified-flow reflow on teacher noise-sample couplings, optional one-step distillation (Liu et al. 2022; InstaFlow)"
    paper = "arXiv:2209.03003, arXiv:2309.06380"
    kinds = frozenset({"continuous"})

    @dataclass
    class Options:
        pairs: str = "cached"  # cached | on_the_fly
        cache_size: int = 65536
        cache_batch: int = 4096
        teacher_sampler: str = "heun"  # the teacher ODE that makes the couplings
        teacher_steps: int = 18
        schedule: str = "uniform"
        time_sampler: str = "uniform"  # reflow training times: uniform (Liu et al.) | logit_normal | lognormal | shifted
        loss_space: str = "flow"  # flow (Liu et al. eq. 1) | x0 | eps | v | native (the student's own prediction type)
        student_prediction: str | None = "flow"  # prediction type of a fresh student (a velocity field)
        sampler: str = "euler"  # euler | ddim (identical on the flow process)
        student_schedule: str = "uniform"  # the student's few-step grid
        distill_from_step: int | None = None  # switch to one-step distillation at this step (None: reflow only)
        distill_target: str = "reflow"  # reflow (the frozen reflowed student's ODE map, InstaFlow) | pairs (teacher couplings)
        distill_teacher_steps: int = 8  # Euler steps of the frozen reflowed student per distillation target
        teacher_weights: str = "student"  # what is frozen at the switch: student | ema (also resets the student to it)
        distance: str = "mse"  # distillation distance: mse | pseudo_huber | l1 (InstaFlow: LPIPS)
        lr: float = 1e-4

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.pairs not in ("cached", "on_the_fly"):
            raise DistillError(f"reflow: pairs must be 'cached' or 'on_the_fly', got {o.pairs!r}")
        if o.loss_space not in (*PREDICTIONS, "native") or o.loss_space == "score":
            raise DistillError(f"reflow: loss_space must be flow, x0, eps, v or native, got {o.loss_space!r}")
        if o.sampler not in STUDENT_SAMPLERS:
            raise DistillError(f"reflow: sampler must be one of {', '.join(STUDENT_SAMPLERS)}, got {o.sampler!r}")
        if o.student_schedule not in SCHEDULES:
            raise DistillError(f"reflow: unknown student_schedule {o.student_schedule!r}; use one of {', '.join(SCHEDULES)}")
        if o.distill_target not in ("reflow", "pairs"):
            raise DistillError(f"reflow: distill_target must be 'reflow' or 'pairs', got {o.distill_target!r}")
        if o.teacher_weights not in ("student", "ema"):
            raise DistillError(f"reflow: teacher_weights must be 'student' or 'ema', got {o.teacher_weights!r}")
        if o.distill_from_step is not None:
            first = 1 if o.distill_target == "reflow" else 0
            if o.distill_from_step < first:
                raise DistillError(
                    f"reflow: distill_from_step must be >= {first} with distill_target={o.distill_target} "
                    "(the reflow stage has to run before its model can be distilled)"
                )
        if o.distill_teacher_steps < 1:
            raise DistillError("reflow: distill_teacher_steps must be at least 1")
        self.time_sampler = make_time_sampler(o.time_sampler)
        self.distance = get_distance(o.distance)
        self.ode = TeacherODE(o.teacher_sampler, o.teacher_steps, o.schedule)
        self.cache: TeacherPairs | None = None
        self.student_steps = 1  # set by the engine from student.steps
        self._frozen = False  # whether reflow_teacher was filled in this process (see _freeze)

    @property
    def distills(self) -> bool:
        return self.options.distill_from_step is not None

    def stage(self, step: int) -> str:
        """``reflow`` or ``distill`` at ``step`` (a function of the step alone)."""
        return "distill" if self.distills and step >= self.options.distill_from_step else "reflow"

    # --- roles and phases ----------------------------------------------------------------------
    def roles(self) -> list[Role]:
        o = self.options
        roles = [Role("student", lr=o.lr, prediction=o.student_prediction)]
        if self.distills and o.distill_target == "reflow":
            roles.append(Role("reflow_teacher", init="student", lr=o.lr, grad_clip=None))
        return roles

    def phases(self, step: int) -> list[str]:
        return [self.stage(step)]

    def phase_roles(self, phase: str) -> list[str]:
        return ["student"]

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        o = self.options
        if self.distills and self.student_steps != 1:
            raise DistillError(
                f"reflow: the distillation stage trains a one-step map, but student.steps={self.student_steps}; "
                "set student.steps=1 or drop method_args.distill_from_step"
            )
        if self.distills and o.teacher_weights == "ema" and "student_ema" not in roles:
            raise DistillError("reflow: teacher_weights=ema needs the student EMA; set ema.half_life (or teacher_weights=student)")
        if o.pairs == "cached":
            self.cache = self.ode.cache(roles.teacher, modality, o.cache_size, o.cache_batch, "reflow")

    def _pairs(self, batch: Batch, roles: Roles) -> TeacherPairs:
        if self.cache is not None:
            return self.cache.draw(batch)
        return self.ode.pairs(roles.teacher, batch.noise, batch.cond)

    # --- losses ----------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        return self._distill_loss(batch, roles) if phase == "distill" else self._reflow_loss(batch, roles)

    def _reflow_loss(self, batch: Batch, roles: Roles) -> Losses:
        p, student = self.process, roles.student
        pairs = self._pairs(batch, roles)
        x1, z = pairs.x0, pairs.noise
        n = x1.shape[0]
        # The global batch's times from the shared generator, this rank's slice (see Batch).
        t = self.time_sampler(n * batch.world, p, generator=batch.generator)[batch.rank * n : (batch.rank + 1) * n]
        t = t.to(device=x1.device)
        x_t = p.add_noise(x1, z, t)
        space = student.prediction if self.options.loss_space == "native" else self.options.loss_space
        target = p.from_x0_eps(x1, z, t, space)
        error = (student.predict(x_t, t, pairs.cond, target=space) - target).pow(2).flatten(1).mean(dim=1)
        total = error.mean()
        return Losses(total=total, terms={f"{space}_mse": total.detach()})

    def _freeze(self, step: int, roles: Roles) -> None:
        """On step ``distill_from_step``: reflow_teacher <- the reflowed student (or its EMA)."""
        if self._frozen or step != self.options.distill_from_step:
            return
        source = roles.student_ema if self.options.teacher_weights == "ema" else roles.student
        copy_weights(roles.reflow_teacher, source)
        if source is not roles.student:  # InstaFlow starts the one-step student from the 2-rectified flow
            copy_weights(roles.student, source)
        self._frozen = True

    def distill_target(self, batch: Batch, roles: Roles) -> TeacherPairs:
        """Noise and the one-step target: the frozen reflowed model's Euler map, or the teacher pairs."""
        if self.options.distill_target == "pairs":
            return self._pairs(batch, roles)
        self._freeze(batch.step, roles)
        teacher = roles.reflow_teacher
        teacher.eval()
        x_T = self.ode.prior(teacher, batch.noise)
        timesteps = sampling_schedule(self.process, self.options.distill_teacher_steps, kind=self.options.student_schedule)
        with torch.no_grad():
            x1 = get_sampler(self.options.sampler)(teacher, x_T, batch.cond, timesteps=timesteps).x0
        return TeacherPairs(batch.noise, x1, batch.cond)

    def _distill_loss(self, batch: Batch, roles: Roles) -> Losses:
        pairs = self.distill_target(batch, roles)
        x_T = self.ode.prior(roles.student, pairs.noise)
        t = torch.full((x_T.shape[0],), self.process.t_max, device=x_T.device, dtype=x_T.dtype)
        distance = self.distance(roles.student.predict(x_T, t, pairs.cond), pairs.x0).mean()
        return Losses(total=distance, terms={"distance": distance})

    # --- the student sampler ---------------------------------------------------------------------
    def student_timesteps(self, steps: int) -> torch.Tensor:
        return sampling_schedule(self.process, steps, kind=self.options.student_schedule)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        return dict(super().sampler_spec(steps), name=self.options.sampler)

    def sample(
        self,
        student: Denoiser,
        noise: torch.Tensor,
        cond: Any = None,
        steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """``steps`` Euler steps of the student's velocity (the last one returns its x0 prediction)."""
        p = student.process
        x_T = noise * p.sigma(torch.tensor(p.t_max, dtype=torch.float64)).to(noise.dtype)
        timesteps = sampling_schedule(p, steps, kind=self.options.student_schedule)
        return get_sampler(self.options.sampler)(student, x_T, cond, timesteps=timesteps, generator=generator)
