"""Learnable sampler distillation (``lsd``) for discrete diffusion: the network stays frozen, a
few-step sampler learns per-step coefficients that align its steps with a many-step teacher.

Fu et al. 2025, "Learnable Sampler Distillation for Discrete Diffusion Models": a student
sampler with ``N`` steps aligns its intermediate trajectory with a high-quality teacher sampler
with many steps by optimising a handful of sampler coefficients; the network is not trained.

Coefficients here, per student step ``i`` (``2N`` numbers in all, role ``sampler``):

* a logit scale ``c_i = exp(rho_i)``: the step draws revealed tokens from
  ``softmax(c_i log p(x0 | x_t))`` (``c_i > 1`` sharpens, i.e. a temperature ``1 / c_i``), and
* a time-input shift ``delta_i``: the network is asked at time ``t_i + delta_i`` while the
  process steps from ``t_i`` to ``t_{i+1}`` (a large step can be better served by the
  prediction of another noise level).

Both start at the plain ancestral sampler (``rho = delta = 0``).

Alignment objective. At a student time ``t_i`` the teacher sampler (``teacher_steps`` uniform
steps over [0, 1]; the student grid is a subset of its grid) has reached ``x_{t_i}``; it goes on
to ``x_{t_{i+1}}`` with its small steps. The student's single step from the same ``x_{t_i}`` must
give that continuation a high likelihood:

    L(rho, delta) = - E [ sum_{l revealed in (t_i, t_{i+1}]} log softmax(c_i log p(x0 | x_{t_i}, t_i + delta_i))^l [x_{t_{i+1}}^l] ] / L_seq,

the cross-entropy of the teacher's multi-step transition under the student's one-step
transition (the keep/reveal probabilities are fixed by the schedule, so only the revealed
tokens carry a term). The learned time schedule of LSD+ is not implemented: the step times
stay on the uniform grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.discrete_diffusion import discrete_process, token_times
from distill.process import MaskedProcess
from distill.samplers import SampleResult, check_token_start


class SamplerCoefficients(nn.Module):
    """Per-step logit scales ``exp(rho)`` and time-input shifts ``delta`` of an ``steps``-step sampler."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.config = {"steps": steps}
        self.rho = nn.Parameter(torch.zeros(steps))
        self.delta = nn.Parameter(torch.zeros(steps))

    @property
    def steps(self) -> int:
        return self.rho.numel()

    def scale(self, i: int) -> torch.Tensor:
        return self.rho[i].exp()

    def describe(self) -> dict[str, list[float]]:
        return {"logit_scale": [float(v) for v in self.rho.detach().exp()],
                "time_shift": [float(v) for v in self.delta.detach()]}


def scaled_log_probs(logp: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log softmax(scale * logp) over the vocabulary; a carried-over (one-hot) row stays one-hot.
    Zero probabilities enter as -1e4 (not -inf), so d(scale * logp)/d scale stays finite."""
    return torch.log_softmax(logp.clamp_min(-1e4) * scale, dim=-1)


def coefficient_sampler(student: Denoiser, x_T: torch.Tensor, cond: Any, timesteps: torch.Tensor,
                        logit_scale: list[float] | torch.Tensor, time_shift: list[float] | torch.Tensor,
                        generator: torch.Generator | None = None) -> SampleResult:
    """Ancestral sampling with per-step logit scales and time-input shifts (module docstring)."""
    ts = check_token_start("lsd", student, x_T, timesteps)
    if len(logit_scale) != ts.numel() - 1 or len(time_shift) != ts.numel() - 1:
        raise DistillError(f"lsd: the sampler was trained for {len(logit_scale)} steps, asked for {ts.numel() - 1}")
    x, p = x_T, student.process
    for i in range(ts.numel() - 1):
        t_in = (ts[i] + float(time_shift[i])).clamp(0.0, 1.0).to(device=x.device, dtype=torch.float32).expand(x.shape[0])
        logp = student.predict(x, t_in, cond, target="logits")
        probs = scaled_log_probs(logp, torch.as_tensor(float(logit_scale[i]))).exp()
        x = p.step(x, probs, ts[i], ts[i + 1], generator=generator if x.device.type == "cpu" else None)
    return SampleResult(x0=x, nfe=ts.numel() - 1)


class LSD(Method):
    name = "lsd"
    description = "learnable sampler distillation: a frozen token model, per-step sampler coefficients fitted to a many-step teacher's trajectory"
    paper = "Fu et al. 2025, Learnable Sampler Distillation for Discrete Diffusion Models"
    kinds = frozenset({"discrete"})

    @dataclass
    class Options:
        teacher_steps: int = 64  # the teacher sampler's uniform steps over [0, 1]
        lr: float = 1e-2

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.student_steps = 1
        self.coefficients: SamplerCoefficients | None = None
        self._restored: dict[str, list[float]] | None = None

    def roles(self) -> list[Role]:
        # The student is the frozen teacher network (no phase updates it); only `sampler` trains.
        return [Role("student", init="teacher", lr=self.options.lr),
                Role("sampler", init="method", lr=self.options.lr, denoiser=False, grad_clip=None)]

    def phases(self, step: int) -> list[str]:
        return ["sampler"]

    def build_role(self, role: Role, roles: Roles, modality: Any) -> nn.Module:
        return SamplerCoefficients(self.student_steps)

    def setup(self, roles: Roles, modality: Any) -> None:
        super().setup(roles, modality)
        discrete_process(self.process, self.name)
        if self.options.teacher_steps % self.student_steps:
            raise DistillError(f"lsd: teacher_steps={self.options.teacher_steps} must be a multiple of student.steps={self.student_steps}")
        self.coefficients = roles.sampler

    def restore(self, sidecar: dict[str, Any]) -> None:
        spec = sidecar.get("sampler", {})
        if "logit_scale" in spec:
            self._restored = {"logit_scale": spec["logit_scale"], "time_shift": spec["time_shift"]}

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        p, teacher, coef = self.process, roles.teacher, roles.sampler
        n, fine = self.student_steps, self.options.teacher_steps
        sub = fine // n
        grid = token_times(p, fine)
        i = int(torch.randint(n, (1,), generator=batch.generator))  # one student step per batch
        with torch.no_grad():
            x = batch.x_T
            for j in range(i * sub):  # the teacher's trajectory up to t_i
                x = p.step(x, teacher.predict(x, grid[j].float(), batch.cond, target="x0"), grid[j], grid[j + 1],
                           generator=batch.generator)
            x_i = x
            for j in range(i * sub, (i + 1) * sub):  # and on to t_{i+1}
                x = p.step(x, teacher.predict(x, grid[j].float(), batch.cond, target="x0"), grid[j], grid[j + 1],
                           generator=batch.generator)
        t_in = (grid[i * sub].float() + coef.delta[i]).clamp(0.0, 1.0).expand(x.shape[0])
        logp = scaled_log_probs(roles.student.predict(x_i, t_in, batch.cond, target="logits"), coef.scale(i))
        if isinstance(p, MaskedProcess):
            revealed = (x_i == p.mask_id) & (x != p.mask_id)
            picked = logp.gather(-1, x.clamp(max=p.vocab_size - 1).unsqueeze(-1)).squeeze(-1)
        else:
            revealed = x != x_i
            picked = logp.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        ce = -torch.where(revealed, picked.clamp_min(-1e4), torch.zeros_like(picked)).sum() / x.numel()
        return Losses(total=ce, terms={"ce": ce.detach(), "step": torch.tensor(float(i))})

    def _values(self) -> dict[str, list[float]]:
        if self.coefficients is not None:
            return self.coefficients.describe()
        if self._restored is not None:
            return self._restored
        raise DistillError("lsd: no learned sampler coefficients (train a run, or open one with distill.engine.run.open_run)")

    def student_timesteps(self, steps: int) -> torch.Tensor:
        return token_times(self.process, steps)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        spec = dict(super().sampler_spec(steps), name="method")
        if self.coefficients is not None or self._restored is not None:
            spec.update(self._values())
        return spec

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 1,
               generator: torch.Generator | None = None) -> SampleResult:
        values = self._values()
        x_T = discrete_process(student.process, self.name).prior_from_noise(noise)
        return coefficient_sampler(student, x_T, cond, token_times(student.process, steps), values["logit_scale"],
                                   values["time_shift"], generator)
