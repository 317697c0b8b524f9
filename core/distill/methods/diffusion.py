"""Train a teacher from data: denoising score matching / flow matching (``diffusion``).

Not a distillation method: it is how the bundled teachers are made
(``distill train configs/<modality>/teacher.yaml``), through the same engine,
checkpoints and exports, so the result loads as a teacher with
``teacher: {loader: safetensors, path: .../student_ema.safetensors}``.

For data ``x0``, time ``t ~ p(t)`` and ``eps ~ N(0, I)``, ``x_t = alpha_t x0 + sigma_t eps``
and the network regresses its native target (Ho et al. 2020 eq. 14 for ``eps``;
Salimans & Ho 2022 for ``v``; Lipman et al. 2022 / Liu et al. 2022 for the flow
velocity ``alpha'_t x0 + sigma'_t eps``):

    L(theta) = E_{x0, t, eps} || F_theta(x_t, t) - target(x0, eps, t) ||^2
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import torch
import torch.nn.functional as F

from distill.denoiser import Denoiser
from distill.method import Batch, Losses, Method, ModelSpec, Role, Roles
from distill.process import make_process, make_time_sampler, sampling_schedule
from distill.samplers import SampleResult, get_sampler


class Diffusion(Method):
    name = "diffusion"
    description = "train a diffusion/flow teacher from data (denoising score / flow matching)"
    paper = "arXiv:2006.11239, arXiv:2210.02747"
    kinds = frozenset({"continuous"})
    needs_data = True
    needs_teacher = False

    @dataclass
    class Options:
        process: str = "flow"
        # keyword arguments of the process, e.g. {schedule: squaredcos_cap_v2, T: 100} for the
        # 100-step DDPM of diffusion policies (vp_discrete); recorded in the export's sidecar
        process_args: Dict[str, Any] = field(default_factory=dict)
        prediction: str = "flow"  # x0 | eps | v | flow
        time_input: str = "t"
        time_sampler: str = "uniform"  # uniform | lognormal | logit_normal | shifted
        lr: float = 1e-3
        cond_dropout: float = 0.0  # probability of the null condition (trains the unconditional model for CFG)
        sampler: str = "heun"  # how the trained model is sampled in reports (it is a teacher)

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.time_sampler = make_time_sampler(self.options.time_sampler)

    def roles(self) -> list[Role]:
        return [Role("student", init="fresh", lr=self.options.lr)]

    def model_spec(self) -> ModelSpec:
        return ModelSpec(make_process(self.options.process, **dict(self.options.process_args)),
                         self.options.prediction, self.options.time_input)

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        model, p = roles.student, self.process
        x0 = batch.x0
        # Draw the global batch's times and keep this rank's slice (see Batch).
        t = self.time_sampler(batch.size * batch.world, p, generator=batch.generator)
        t = t[batch.rank * batch.size : (batch.rank + 1) * batch.size].to(batch.device)
        eps = batch.randn_like(x0)
        x_t = p.add_noise(x0, eps, t)
        cond = batch.cond
        if self.options.cond_dropout > 0 and cond is not None and batch.null_cond is not None:
            drop = batch.rand(batch.size) < self.options.cond_dropout
            cond = torch.where(drop, batch.null_cond, cond)
        target = p.convert(x0, x_t, t, "x0", model.prediction)
        mse = F.mse_loss(model.raw(x_t, t, cond), target)
        return Losses(total=mse, terms={"mse": mse})

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 18,
               generator: torch.Generator | None = None) -> SampleResult:
        """The trained model is a teacher: sample it with its ODE solver."""
        p = student.process
        x_T = noise * p.sigma(torch.tensor(p.t_max, dtype=torch.float64)).to(noise.dtype)
        return get_sampler(self.options.sampler)(student, x_T, cond, timesteps=sampling_schedule(p, steps), generator=generator)
