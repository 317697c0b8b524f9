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
stay on the uniform grid. For the masked process a grid only sets how many tokens each step
reveals and the time input, which the learned reveal order below learns per position.

Learned reveal order (``reveal_order="learned"``, masked process; an extension of LSD+'s learned
schedule from one schedule to one per position, not in the paper). A per-step temperature cannot
make a factorised step draw dependent tokens together; choosing *which* positions are revealed
together can. On ``aa+bb=ccc;`` an exact denoiser revealing the operands first and the sum after
is exact in 2 steps, while the random order of the ancestral sampler is 8 % valid at 4 steps.
Each position ``l`` gets a distribution ``pi_l = softmax(theta_l)`` over the ``N`` steps at which
it is revealed (role ``sampler``, ``L x N`` more numbers); a sequence's plan ``s`` draws every
``s_l ~ pi_l``, and step ``i`` reveals the positions with ``s_l = i``, each drawn from
``softmax(c_i log p(x0 | x_{t_i}, t_i + delta_i))``. Under the linear keep schedule ``theta = 0``
is the ancestral sampler's law (a masked token is revealed at each of the ``N`` steps with
probability ``1 / N``). The objective is the log-likelihood of the many-step teacher's samples
``x`` (``order_targets="data"``: of real sequences) under the student sampler, through the plan
(Jensen: a lower bound of ``log q(x)``):

    J = E_x E_{s ~ pi} [ R(x, s) ],  R(x, s) = sum_i sum_{l: s_l = i} log softmax(c_i log p(x0 | x^{(s < i)}, t_i + delta_i))^l [x^l],

where ``x^{(s < i)}`` shows the positions revealed before step ``i`` and masks the rest. Its
gradient reaches ``rho, delta`` directly and ``theta`` through the score function (REINFORCE,
Williams 1992) with two plans per sample, each the other's baseline (leave-one-out). The
teacher's samples come from a pool of ``teacher_pool`` drawn once with a fixed seed. This is a
forward KL: the plan must also cover the teacher's own mistakes (a many-step sample that a
confident teacher finds nearly impossible under another order costs much), so a teacher that
is far from valid is better served by ``order_targets="data"``.
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
from distill.process.discrete import inverse_cdf
from distill.samplers import SampleResult, ancestral, check_token_start


LOG_FLOOR = -30.0  # the smallest per-token log-probability the learned-order objective counts


class SamplerCoefficients(nn.Module):
    """Per-step logit scales ``exp(rho)`` and time-input shifts ``delta`` of an ``steps``-step sampler,
    and with ``seq_len`` the reveal-step logits ``theta [seq_len, steps]`` of a learned reveal order."""

    def __init__(self, steps: int, seq_len: int | None = None) -> None:
        super().__init__()
        self.config = {"steps": steps, "seq_len": seq_len}
        self.rho = nn.Parameter(torch.zeros(steps))
        self.delta = nn.Parameter(torch.zeros(steps))
        self.theta = nn.Parameter(torch.zeros(seq_len, steps)) if seq_len else None

    @property
    def steps(self) -> int:
        return self.rho.numel()

    def scale(self, i: int) -> torch.Tensor:
        return self.rho[i].exp()

    def describe(self) -> dict[str, list]:
        out: dict[str, list] = {"logit_scale": [float(v) for v in self.rho.detach().exp()],
                                "time_shift": [float(v) for v in self.delta.detach()]}
        if self.theta is not None:
            out["reveal_logits"] = self.theta.detach().cpu().tolist()
        return out


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


def plans_from_uniform(reveal_logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reveal steps ``s [B, L]`` with ``s_l ~ softmax(reveal_logits[l])``, by inverse CDF of uniforms ``u [B, L]``."""
    pi = torch.softmax(reveal_logits.detach().double(), dim=-1).to(u.device)  # [L, N]
    return inverse_cdf(pi.expand(u.shape[0], -1, -1), u.double().unsqueeze(-1))


def draw_plans(reveal_logits: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``batch`` reveal plans ``[batch, L]`` drawn independently per position (on the CPU generator)."""
    u = torch.rand((batch, reveal_logits.shape[0]), generator=generator, dtype=torch.float64)
    return plans_from_uniform(reveal_logits, u).to(reveal_logits.device)


def order_sampler(student: Denoiser, x_T: torch.Tensor, cond: Any, timesteps: torch.Tensor,
                  logit_scale: list[float] | torch.Tensor, time_shift: list[float] | torch.Tensor,
                  reveal_logits: list[list[float]] | torch.Tensor, generator: torch.Generator | None = None) -> SampleResult:
    """Masked-process sampling along a drawn reveal plan (module docstring: learned reveal order)."""
    ts = check_token_start("lsd", student, x_T, timesteps)
    p = student.process
    if not isinstance(p, MaskedProcess):
        raise DistillError(f"lsd: a learned reveal order needs the masked process; this model's process is {p.name!r}")
    theta = torch.as_tensor(reveal_logits, dtype=torch.float64)
    steps = ts.numel() - 1
    if theta.shape != (x_T.shape[1], steps) or len(logit_scale) != steps or len(time_shift) != steps:
        raise DistillError(f"lsd: the reveal order was learned for {tuple(theta.shape)} (positions, steps); "
                           f"asked for {x_T.shape[1]} positions and {steps} steps")
    cpu = generator if x_T.device.type == "cpu" else None
    plan = draw_plans(theta, x_T.shape[0], generator).to(x_T.device)
    x = x_T
    for i in range(steps):
        t_in = (ts[i] + float(time_shift[i])).clamp(0.0, 1.0).to(device=x.device, dtype=torch.float32).expand(x.shape[0])
        probs = scaled_log_probs(student.predict(x, t_in, cond, target="logits"), torch.as_tensor(float(logit_scale[i]))).exp()
        draw = inverse_cdf(probs, torch.rand((*x.shape, 1), generator=cpu, device=x.device, dtype=torch.float64))
        x = torch.where((plan == i) & (x == p.mask_id), draw, x)
    return SampleResult(x0=x, nfe=steps)


class LSD(Method):
    name = "lsd"
    description = "learnable sampler distillation: a frozen token model, per-step sampler coefficients fitted to a many-step teacher's trajectory"
    paper = "Fu et al. 2025, Learnable Sampler Distillation for Discrete Diffusion Models"
    kinds = frozenset({"discrete"})

    @dataclass
    class Options:
        teacher_steps: int = 64  # the teacher sampler's uniform steps over [0, 1]
        lr: float = 1e-2
        reveal_order: str = "schedule"  # schedule: the process's random reveals | learned: a reveal step per position
        order_targets: str = "teacher"  # learned order: fit to the teacher's samples (data-free) | data
        teacher_pool: int = 2048  # learned order: teacher samples drawn once (fixed seed) and reused
        pool_batch: int = 512  # learned order: teacher samples drawn per batch while filling the pool

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.reveal_order not in ("schedule", "learned"):
            raise DistillError(f"lsd: reveal_order must be 'schedule' or 'learned'; got {self.options.reveal_order!r}")
        if self.options.order_targets not in ("teacher", "data"):
            raise DistillError(f"lsd: order_targets must be 'teacher' or 'data'; got {self.options.order_targets!r}")
        if self.options.teacher_pool < 1 or self.options.pool_batch < 1:
            raise DistillError("lsd: teacher_pool and pool_batch must be >= 1")
        self.student_steps = 1
        self.coefficients: SamplerCoefficients | None = None
        self._restored: dict[str, list] | None = None
        self._pool: torch.Tensor | None = None

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.options.reveal_order == "learned" and self.options.order_targets == "data"

    def roles(self) -> list[Role]:
        # The student is the frozen teacher network (no phase updates it); only `sampler` trains.
        return [Role("student", init="teacher", lr=self.options.lr),
                Role("sampler", init="method", lr=self.options.lr, denoiser=False, grad_clip=None)]

    def phases(self, step: int) -> list[str]:
        return ["sampler"]

    def build_role(self, role: Role, roles: Roles, modality: Any) -> nn.Module:
        learned = self.options.reveal_order == "learned"
        return SamplerCoefficients(self.student_steps, int(modality.sample_shape[0]) if learned else None)

    def setup(self, roles: Roles, modality: Any) -> None:
        super().setup(roles, modality)
        discrete_process(self.process, self.name)
        if self.options.reveal_order == "learned" and not isinstance(self.process, MaskedProcess):
            raise DistillError(f"lsd: reveal_order='learned' needs the masked process; the teacher's is {self.process.name!r}")
        if self.options.reveal_order == "schedule" and self.options.teacher_steps % self.student_steps:
            raise DistillError(f"lsd: teacher_steps={self.options.teacher_steps} must be a multiple of student.steps={self.student_steps}")
        self.coefficients = roles.sampler

    def restore(self, sidecar: dict[str, Any]) -> None:
        spec = sidecar.get("sampler", {})
        if "logit_scale" in spec:
            self._restored = {"logit_scale": spec["logit_scale"], "time_shift": spec["time_shift"]}
            if "reveal_logits" in spec:
                self._restored["reveal_logits"] = spec["reveal_logits"]

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        if self.options.reveal_order == "learned":
            return self._order_loss(batch, roles)
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

    def _teacher_pool(self, batch: Batch, teacher: Denoiser) -> torch.Tensor:
        """``teacher_pool`` samples of the teacher's ``teacher_steps``-step ancestral sampler, drawn
        once from a fixed seed (so a resumed or distributed run sees the same pool)."""
        if self._pool is None:
            o, p = self.options, self.process
            gen = torch.Generator().manual_seed(0)
            grid = token_times(p, o.teacher_steps)
            parts = []
            with torch.no_grad():
                for start in range(0, o.teacher_pool, o.pool_batch):
                    n = min(o.pool_batch, o.teacher_pool - start)
                    x_T = p.prior((n, batch.x_T.shape[1]), device=batch.x_T.device)
                    parts.append(ancestral(teacher, x_T, None, timesteps=grid, generator=gen).x0)
            self._pool = torch.cat(parts)
        return self._pool

    def _order_loss(self, batch: Batch, roles: Roles) -> Losses:
        """REINFORCE on the reveal order, pathwise on the per-step coefficients (module docstring)."""
        if batch.cond is not None:
            raise DistillError("lsd: reveal_order='learned' supports unconditional token models only")
        p, coef, student = self.process, roles.sampler, roles.student
        b, length = batch.x_T.shape
        if self.options.order_targets == "data":
            if batch.x0 is None:
                raise DistillError("lsd: order_targets='data' needs the modality's data (batch.x0 is None)")
            x = batch.x0
        else:
            pool = self._teacher_pool(batch, roles.teacher)
            x = pool[batch.randint(pool.shape[0], b, device=pool.device)]
        grid = token_times(p, self.student_steps)
        log_pi = torch.log_softmax(coef.theta, dim=-1)  # [L, N]
        # two plans per sequence from the batch's global draws (each rank keeps its own slice)
        plans = torch.stack([plans_from_uniform(coef.theta, torch.stack([batch.rand(b) for _ in range(length)], 1))
                             for _ in range(2)])  # [2, B, L]
        returns = []
        for plan in plans:
            r = x.new_zeros(b, dtype=torch.float32)
            for i in range(self.student_steps):
                context = torch.where(plan < i, x, torch.full_like(x, p.mask_id))
                t_in = (grid[i].float() + coef.delta[i]).clamp(0.0, 1.0).expand(b)
                logp = scaled_log_probs(student.predict(context, t_in, None, target="logits"), coef.scale(i))
                # floored at log 1e-13 (an impossible context under an exact teacher gives NaN): a rare
                # zero-probability pool sample must not dominate the score-function gradient
                picked = logp.gather(-1, x.unsqueeze(-1)).squeeze(-1).nan_to_num(nan=LOG_FLOOR).clamp_min(LOG_FLOOR)
                r = r + torch.where(plan == i, picked, torch.zeros_like(picked)).sum(-1)
            returns.append(r)
        returns = torch.stack(returns)  # [2, B]
        advantage = (returns - returns.flip(0)).detach()  # leave-one-out baseline
        plan_log_prob = log_pi[torch.arange(length, device=plans.device), plans].sum(-1)  # [2, B]: log pi(s)
        ce = -returns.mean() / length
        total = ce - (advantage * plan_log_prob).mean() / length
        entropy = -(log_pi.exp() * log_pi).sum(-1).mean()
        return Losses(total=total, terms={"ce": ce.detach(), "reveal_entropy": entropy.detach()})

    def _values(self) -> dict[str, list]:
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
        if "reveal_logits" in values:
            return order_sampler(student, x_T, cond, token_times(student.process, steps), values["logit_scale"],
                                 values["time_shift"], values["reveal_logits"], generator)
        return coefficient_sampler(student, x_T, cond, token_times(student.process, steps), values["logit_scale"],
                                   values["time_shift"], generator)
