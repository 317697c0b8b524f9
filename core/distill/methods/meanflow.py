"""MeanFlow distillation (``meanflow``): an average-velocity network learnt from the teacher's velocity.

Geng et al. 2025, "Mean Flows for One-step Generative Modeling" (arXiv:2505.13447). For the
probability-flow ODE ``dx/dt = v(x_t, t)`` (here: the teacher's ``"flow"`` prediction, the
velocity in the process's own time, t increasing towards noise), the *average velocity* over
``[r, t]`` is

    u(x_t, r, t) = 1/(t - r) int_r^t v(x_tau, tau) d tau                              (eq. 3)

so that one jump ``x_r = x_t - (t - r) u(x_t, r, t)`` lands exactly on the ODE trajectory
(eq. 12). Differentiating ``(t - r) u = int_r^t v`` in t gives the MeanFlow identity

    u(x_t, r, t) = v(x_t, t) - (t - r) d/dt u(x_t, r, t)                               (eq. 6)

with the total derivative along the trajectory ``d/dt u = v . d_x u + d_t u`` (eq. 8), i.e. the
Jacobian-vector product of ``(x, r, t) -> u`` with tangent ``(v, 0, 1)`` (Algorithm 1). The loss
regresses the student onto the stop-gradient right-hand side,

    L = E sg(w) || u_theta(x_t, r, t) - sg(v - (t - r) (v . d_x u_theta + d_t u_theta)) ||^2  (eq. 9-10)

with the adaptive weight ``w = 1 / (||Delta||^2 + c)^p`` (sec. 4.3; p = 0 is plain L2, p = 1/2
the pseudo-Huber loss). A fraction of the samples uses ``r = t``, where the target is ``v``
itself (flow matching; the paper's best ratio keeps 75 % of the batch there, Table 1a).

Distillation. The paper trains from data with the conditional velocity ``eps - x0``; here ``v``
is the *teacher's* velocity at ``(x_t, t)`` (optionally classifier-free guided), and ``x_t`` is a
point of the teacher's marginal: a cached teacher ODE sample (data-free) or a real sample,
noised to ``t``. The student's network is wrapped in a Denoiser like any other; ``u`` is its
``"flow"`` prediction at ``(x_t, t)`` (its native output when it predicts ``flow``, as fresh
students do; a teacher-initialised student keeps the teacher's prediction type and ``u`` is that
output converted to a velocity at ``(x_t, t)``). At ``r = t`` the student is therefore the
teacher, and the extra input ``r`` is what moves it away.

The module also holds what the flow-map methods share (:mod:`distill.methods.shortcut`): the
marginal points :class:`MarginalPoints`, the teacher velocity and the jump sampler
:func:`jump_sample`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.pairs import TeacherODE, TeacherPairs
from distill.process import make_time_sampler, sampling_schedule
from distill.samplers import SampleResult

__all__ = ["MeanFlow", "MarginalPoints", "jump_sample", "teacher_velocity", "take", "draw_times"]

X0_SOURCES = ("teacher", "data")
SECOND_TIMES = ("interval", "r")

# Phrases torch uses when an operation cannot be differentiated in forward mode (torch.func.jvp).
_FORWARD_AD_HINTS = ("forward ad", "forward-mode", "forward mode", "jvp", "functorch", "setup_context", "fw_grad", "dual")


# --- shared by the flow-map methods ------------------------------------------------------
def take(obj: Any, index: Any) -> Any:
    """``obj[index]`` along the batch (a slice or an index tensor) for a tensor, a dict/list/tuple
    of tensors, or None (conditioning comes in all of these forms)."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj[index]
    if isinstance(obj, dict):
        return {k: take(v, index) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(take(v, index) for v in obj)
    return obj


def teacher_velocity(teacher: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Any, null_cond: Any,
                     guidance: float | None) -> torch.Tensor:
    """The teacher's probability-flow velocity ``dx/dt`` at ``(x_t, t)`` (guided when ``guidance`` is set)."""
    with torch.no_grad():
        if guidance is not None:
            return teacher.guided(x_t, t, cond, null_cond, guidance, target="flow")
        return teacher.predict(x_t, t, cond, target="flow")


class MarginalPoints:
    """Clean samples ``x0`` whose noised versions ``alpha_t x0 + sigma_t eps`` follow the teacher's marginal.

    ``source="teacher"``: ``size`` endpoints of the teacher's deterministic ODE solved once at set-up
    from a fixed seed (the same cache as ``kd``: :class:`distill.methods.pairs.TeacherODE`), so the
    method is data-free; noised with fresh noise they are distributed as the teacher's own marginal
    ``p_t``. ``source="data"``: the batch's real samples (the method then needs data).
    """

    def __init__(self, source: str, ode: TeacherODE, size: int, chunk: int, label: str) -> None:
        if source not in X0_SOURCES:
            raise DistillError(f"{label}: x0_source must be one of {', '.join(X0_SOURCES)}; got {source!r}")
        if source == "teacher" and size < 1:
            raise DistillError(f"{label}: cache_size must be at least 1 with x0_source=teacher")
        self.source, self.ode, self.size, self.chunk, self.label = source, ode, size, chunk, label
        self.cache: TeacherPairs | None = None

    def setup(self, teacher: Denoiser, modality: Any) -> None:
        if self.source == "teacher":
            self.cache = self.ode.cache(teacher, modality, self.size, self.chunk, self.label)

    def draw(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        """``(x0, cond)`` for the batch: cached teacher samples, or the batch's data."""
        if self.source == "data":
            if batch.x0 is None:
                raise DistillError(f"{self.label} with x0_source=data needs real data, but the batch has none")
            return batch.x0, batch.cond
        if self.cache is None:
            raise DistillError(f"{self.label}: the teacher-sample cache is empty; the method's setup() was not run")
        pairs = self.cache.draw(batch)
        return pairs.x0, pairs.cond


def draw_times(sampler: Callable, batch: Batch, process: Any, n: int) -> torch.Tensor:
    """``n`` times from a training time sampler, drawn for the global batch and sliced to this rank."""
    full = sampler(n * batch.world, process, generator=batch.generator)
    return full[batch.rank * n : (batch.rank + 1) * n].to(batch.device)


def jump_sample(
    average_velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    process: Any,
    noise: torch.Tensor,
    steps: int,
) -> SampleResult:
    """Flow-map sampling: ``x_{t_{k+1}} = x_{t_k} - (t_k - t_{k+1}) u(x_{t_k}, t_{k+1}, t_k)``.

    MeanFlow eq. 12-13 (one step: ``x = z - (t_max - t_min) u(z, t_min, t_max)``) and shortcut
    models' Algorithm 2, on the uniform schedule ``t_max = t_0 > ... > t_steps = t_min`` of
    :func:`distill.process.sampling_schedule`. ``average_velocity(x, r, t)`` gets ``[B]`` times of
    x's dtype. The last jump lands on ``t_min``, whose ``x`` is the sample (``sigma(t_min)`` is the
    process's floor, 1e-3 for ``flow``). NFE = steps.
    """
    if int(steps) < 1:
        raise DistillError(f"steps must be >= 1; got {steps}")
    timesteps = sampling_schedule(process, int(steps))
    sigma_max = process.sigma(torch.tensor(process.t_max, dtype=torch.float64))
    x = noise * sigma_max.to(noise.dtype)
    batch = x.shape[0]
    for k in range(int(steps)):
        t = timesteps[k].to(device=x.device, dtype=x.dtype).expand(batch)
        r = timesteps[k + 1].to(device=x.device, dtype=x.dtype).expand(batch)
        x = x - float(timesteps[k] - timesteps[k + 1]) * average_velocity(x, r, t)
    return SampleResult(x0=x, nfe=int(steps))


# --- MeanFlow ----------------------------------------------------------------------------
class MeanFlow(Method):
    name = "meanflow"
    description = "average-velocity flow map from the teacher's velocity via the MeanFlow identity (Geng et al. 2025)"
    paper = "arXiv:2505.13447"
    kinds = frozenset({"continuous"})
    step_agnostic = True  # any-step sampling of one trained student

    @dataclass
    class Options:
        flow_fraction: float = 0.75  # share of samples with r = t (flow matching); paper Table 1a: 25 % r != t
        time_sampler: str = "logit_normal"  # t and r: two draws, sorted (uniform | logit_normal | lognormal | shifted)
        logit_mean: float = -0.4  # logit-normal parameters (paper Table 1b: lognorm(-0.4, 1.0))
        logit_std: float = 1.0
        second_time: str = "interval"  # the network's extra input `r` carries: interval ((t - r)/T) | r ((r - t_min)/T)
        weight_p: float = 1.0  # adaptive weight w = 1/(||Delta||^2 + c)^p (sec. 4.3): 0 = L2, 0.5 = pseudo-Huber
        weight_c: float = 1.0e-3
        x0_source: str = "teacher"  # teacher: noised cached teacher ODE samples (data-free) | data
        cache_size: int = 65536  # teacher samples solved at set-up (x0_source=teacher)
        cache_batch: int = 4096
        teacher_sampler: str = "heun"
        teacher_steps: int = 18
        schedule: str = "uniform"
        guidance: float | None = None  # CFG scale of the teacher velocity (None: unguided)
        lr: float = 1.0e-4

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if not 0.0 <= o.flow_fraction <= 1.0:
            raise DistillError(f"meanflow: flow_fraction must be in [0, 1] (the share of samples with r = t); got {o.flow_fraction}")
        if o.second_time not in SECOND_TIMES:
            raise DistillError(f"meanflow: second_time must be one of {', '.join(SECOND_TIMES)}; got {o.second_time!r}")
        if o.weight_p < 0 or o.weight_c <= 0:
            raise DistillError(f"meanflow: need weight_p >= 0 and weight_c > 0; got p={o.weight_p}, c={o.weight_c}")
        if o.time_sampler == "logit_normal":
            self.time_sampler = make_time_sampler("logit_normal", mean=o.logit_mean, std=o.logit_std)
        else:
            self.time_sampler = make_time_sampler(o.time_sampler)
        ode = TeacherODE(o.teacher_sampler, o.teacher_steps, o.schedule)
        self.points = MarginalPoints(o.x0_source, ode, o.cache_size, o.cache_batch, "meanflow")

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.options.x0_source == "data"

    def roles(self) -> list[Role]:
        # A fresh student predicts the velocity, so u is its raw output (no conversion in the jvp).
        return [Role("student", lr=self.options.lr, prediction="flow", extra_inputs=("r",))]

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.points.setup(roles.teacher, modality)

    # --- the average velocity ------------------------------------------------------
    def second_input(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's extra input ``r``: the interval ``(t - r)/T`` or the time ``(r - t_min)/T``,
        ``T = t_max - t_min`` (so it lies in [0, 1] for every process, as the embedding expects)."""
        p = self.process
        span = p.t_max - p.t_min
        return (t - r) / span if self.options.second_time == "interval" else (r - p.t_min) / span

    def average_velocity(self, student: Denoiser, x_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """``u(x_t, r, t)``: the student's velocity (``"flow"``) prediction with the second time as extra input."""
        return student.predict(x_t, t, cond, target="flow", r=self.second_input(r, t))

    def total_derivative(self, student: Denoiser, x_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                         cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, du/dt)`` with ``du/dt = v . d_x u + d_t u`` at fixed r (eq. 8) by one ``torch.func.jvp``.

        The primal output ``u`` keeps its graph to the student's parameters (the loss trains it); the
        tangent is the target's derivative, stop-gradient'ed by the caller. Attention runs on the
        math backend of ``scaled_dot_product_attention`` meanwhile.
        """
        def u_of(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
            return self.average_velocity(student, x, r, time, cond)

        try:
            # The fused flash / memory-efficient kernels of scaled_dot_product_attention have no
            # forward-mode derivative (pytorch/pytorch#117629, #128971); the math backend is made of
            # differentiable operations, so attention runs through it inside the jvp.
            with sdpa_kernel([SDPBackend.MATH]):
                return torch.func.jvp(u_of, (x_t, t), (v.to(x_t.dtype), torch.ones_like(t)))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError) as error:
            message = str(error)
            if not any(hint in message.lower() for hint in _FORWARD_AD_HINTS):
                raise
            raise DistillError(
                f"meanflow needs d/dt u by forward-mode differentiation (torch.func.jvp) through the student "
                f"network {type(student.net).__name__}, and an operation in it does not support that: {message.strip()} "
                "Use a network made of differentiable torch operations (the reference networks of distill.nets "
                "work: MLP, UNet with GroupNorm and attention), or give custom autograd Functions a jvp "
                "(https://pytorch.org/docs/stable/notes/extending.func.html)."
            ) from error

    def times(self, batch: Batch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, t)``: two draws of the time sampler, sorted so that ``r <= t``; the first
        ``round(flow_fraction * n)`` samples get ``r = t``."""
        a = draw_times(self.time_sampler, batch, self.process, n)
        b = draw_times(self.time_sampler, batch, self.process, n)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        n_flow = self.flow_count(n)
        r = torch.cat([t[:n_flow], r[n_flow:]])
        return r, t

    def flow_count(self, n: int) -> int:
        return int(round(self.options.flow_fraction * n))

    # --- loss ----------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        o, p, student = self.options, self.process, roles.student
        x0, cond = self.points.draw(batch)
        n = x0.shape[0]
        r, t = self.times(batch, n)
        x_t = p.add_noise(x0, batch.randn_like(x0), t)
        v = teacher_velocity(roles.teacher, x_t, t, cond, batch.null_cond, o.guidance)
        k = self.flow_count(n)
        first, rest = slice(0, k), slice(k, n)
        parts_u, parts_target = [], []
        if k > 0:  # r = t: the identity reduces to u = v (flow matching on the teacher's velocity)
            parts_u.append(self.average_velocity(student, x_t[first], r[first], t[first], take(cond, first)))
            parts_target.append(v[first])
        if k < n:
            u, dudt = self.total_derivative(student, x_t[rest], r[rest], t[rest], v[rest], take(cond, rest))
            gap = (t[rest] - r[rest]).to(u.dtype).view(-1, *([1] * (u.ndim - 1)))
            parts_u.append(u)
            parts_target.append(v[rest] - gap * dudt)
        u = torch.cat(parts_u)
        target = torch.cat(parts_target).detach()
        delta = (u - target).flatten(1)
        norm2 = delta.pow(2).sum(dim=1)  # ||Delta||^2 of the paper
        weight = (norm2.detach() + o.weight_c).pow(-o.weight_p)
        dims = delta.shape[1]
        total = (weight * norm2).mean() / dims  # divided by the dimension: p = 0 is the mean squared error
        terms = {"mse": norm2.detach().mean() / dims}
        if k > 0:
            terms["mse_flow"] = norm2[first].detach().mean() / dims
        if k < n:
            terms["mse_mean"] = norm2[rest].detach().mean() / dims
        return Losses(total=total, terms=terms)

    # --- sampler -------------------------------------------------------------------------
    def sampler_spec(self, steps: int) -> dict[str, Any]:
        """The network takes extra inputs (see :meth:`sample`); no generic sampler reproduces it."""
        return {"name": "method", "method": self.name, "steps": steps}

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 1,
               generator: torch.Generator | None = None) -> SampleResult:
        """``steps`` jumps ``x_r = x_t - (t - r) u(x_t, r, t)`` on the uniform schedule (eq. 12); one
        step is ``x = z - (t_max - t_min) u(z, t_min, t_max)`` (eq. 13). Deterministic."""
        if self.process is None:
            self.process = student.process
        return jump_sample(lambda x, r, t: self.average_velocity(student, x, r, t, cond), student.process, noise, steps)

