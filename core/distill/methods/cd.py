"""Consistency distillation (``cd``) and guidance-conditioned latent consistency distillation (``lcm``).

Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models" (arXiv:2303.01469). A
consistency function maps every point of a probability-flow ODE trajectory to the
trajectory's data end. It is parameterised so that the boundary condition
``f(x, t_min) = x`` holds by construction (Song et al. eq. 5):

    f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(x, t),   c_skip(t_min) = 1, c_out(t_min) = 0.

Here ``F_theta`` is the student network's x0 prediction (``student.predict(x, t)``, whatever
its native prediction type), so a student initialised from the teacher starts near the
teacher's denoiser; :func:`boundary_coefficients` gives ``c_skip, c_out`` for any Gaussian
process through ``alpha(t), sigma(t)``.

Consistency distillation (Song et al. Algorithm 2, eq. 7): on a grid
``t_min = t_0 < ... < t_N = t_max`` draw data ``x ~ p_data``, an index ``n`` and
``x_{t_{n+k}} = alpha x + sigma z``; one step of the teacher's ODE solver ``Phi`` gives
``x^_{t_n} = Phi(x_{t_{n+k}}, t_{n+k} -> t_n)``, and

    L(theta, theta^-) = E d( f_theta(x_{t_{n+k}}, t_{n+k}),  f_theta^-(x^_{t_n}, t_n) ),        (eq. 7)
    theta^- <- stopgrad(mu theta^- + (1 - mu) theta)                                           (Alg. 2)

with ``k = 1`` in Song et al.; ``k > 1`` is the skipping-step technique of latent
consistency models (Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378, Sec. 4.3):
the teacher jumps ``k`` grid points in one solver step. ``theta^-`` is the ``target`` role
(an EMA of the student with its own rate ``mu``, separate from the engine's student EMA).

``lcm`` (Luo et al. 2023, Sec. 4.2, eq. 9-10) bakes classifier-free guidance into the
student: the guidance scale ``w ~ U[w_min, w_max]`` is drawn per sample, the teacher step
uses the guided prediction ``x_u + w (x_c - x_u)`` (the Denoiser's convention; LCM's
``omega`` is ``w - 1``), and student and target read ``w`` as an extra network input:
``f_theta(x, t, w)``. At sampling time ``w`` is the option ``guidance``.

Student samplers: multistep consistency sampling (Song et al. Algorithm 1: ``x0 = f(x_t, t)``,
re-noise with fresh noise to the next time) or the strategic stochastic sampling of
Trajectory Consistency Distillation (Zheng et al. 2024, arXiv:2402.19159, Sec. 4.3), whose
``gamma`` in [0, 1] sets how much fresh noise enters (0: deterministic, 1: Algorithm 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.methods.distances import DISTANCES
from distill.process import expand_like, sampling_schedule
from distill.samplers import SampleResult, consistency, multistep

SOLVERS = ("euler", "heun", "ddim")
PARAMETERIZATIONS = ("ddim", "edm")
SAMPLERS = ("consistency", "tcd")
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# pure math
# ---------------------------------------------------------------------------------------------


def boundary_coefficients(
    process: Any, t: Tensor | float, parameterization: str = "edm", sigma_data: float = 0.5
) -> tuple[Tensor, Tensor]:
    """``(c_skip(t), c_out(t))`` in float64 for ``f(x, t) = c_skip x + c_out x0_theta(x, t)``.

    Both satisfy the boundary condition ``c_skip(t_min) = 1, c_out(t_min) = 0`` exactly
    (Song et al. 2023, eq. 5) for any process ``x_t = alpha x0 + sigma eps``:

    ``ddim``: f is the DDIM jump (Song, Meng & Ermon 2021, eq. 12) from t to t_min with the
        network's x0 prediction and the implied ``eps = (x - alpha x0) / sigma``:
        ``f = alpha_min x0 + sigma_min eps``, i.e.
        ``c_skip = sigma_min / sigma(t)``, ``c_out = alpha_min - alpha(t) sigma_min / sigma(t)``.
        A teacher-initialised student starts as the teacher's own first-order consistency
        function, and ``c_skip`` is negligible away from t_min (``sigma_min / sigma``).
    ``edm``: Song et al.'s EDM-style coefficients (their Appendix C, with the network output
        already an x0 prediction, as LCM does, Luo et al. 2023 eq. 3) on the EDM-equivalent noise
        level ``s(t) = sigma(t) / alpha(t)`` measured from t_min, ``tau = s(t) - s(t_min)``:
        ``c_skip = sigma_data^2 / (tau^2 + sigma_data^2)``, ``c_out = tau / sqrt(tau^2 + sigma_data^2)``
        (``tau = inf`` where ``alpha = 0``, e.g. flow at t = 1: ``c_skip = 0, c_out = 1``).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise DistillError(f"unknown consistency parameterization {parameterization!r}; use one of {', '.join(PARAMETERIZATIONS)}")
    t = torch.as_tensor(t).to(F64)
    t_min = torch.tensor(process.t_min, dtype=F64, device=t.device)
    a, s = process.alpha(t).to(F64), process.sigma(t).to(F64)
    a_min, s_min = process.alpha(t_min).to(F64), process.sigma(t_min).to(F64)
    if parameterization == "ddim":
        c_skip = s_min / s
        return c_skip, a_min - a * c_skip
    if not sigma_data > 0:
        raise DistillError(f"consistency parameterization 'edm' needs sigma_data > 0, got {sigma_data}")
    tau = torch.where(a > 0, s / a.clamp_min(1e-300) - s_min / a_min, torch.full_like(a, math.inf))
    sd2 = sigma_data * sigma_data
    finite = torch.isfinite(tau)
    tau_f = torch.where(finite, tau, torch.zeros_like(tau))
    c_skip = torch.where(finite, sd2 / (tau_f * tau_f + sd2), torch.zeros_like(tau))
    c_out = torch.where(finite, tau_f / torch.sqrt(tau_f * tau_f + sd2), torch.ones_like(tau))
    return c_skip, c_out


def guided_prediction(
    teacher: Denoiser, x: Tensor, t: Tensor, cond: Any, null_cond: Any, w: Tensor | None, target: str
) -> Tensor:
    """The teacher's prediction, guided as ``x_u + w (x_c - x_u)`` with a per-sample scale ``w [B]``.

    The Denoiser's convention (Ho & Salimans 2022); :meth:`Denoiser.guided` takes one float,
    LCM draws one ``w`` per sample. Without ``w`` or without a condition it is the plain
    prediction (guidance is a no-op on unconditional models, as in ``Denoiser.guided``).
    """
    if w is None or cond is None:
        return teacher.predict(x, t, cond, target=target)
    conditional = teacher.predict(x, t, cond, target=target)
    unconditional = teacher.predict(x, t, null_cond, target=target)
    return unconditional + expand_like(w, conditional).to(conditional.dtype) * (conditional - unconditional)


def ode_step(
    predict: Callable[[Tensor, Tensor, str], Tensor], process: Any, x: Tensor, t: Tensor, s: Tensor, solver: str
) -> Tensor:
    """One step ``Phi(x_t, t -> s)`` of the teacher's probability-flow ODE, per-sample times ``t, s [B]``.

    ``predict(x, t, target)`` is the (guided) teacher; ``t`` and ``s`` are float64 process times.

    euler: ``x + (s - t) u(x, t)`` with the velocity ``u`` = the ``flow`` prediction (Song et al.
           2021, eq. 13 in the process's own time).
    heun:  ``x' = x + h u(x, t)``, ``x + h (u(x, t) + u(x', s)) / 2`` (Karras et al. 2022, Alg. 1;
           the solver of Song et al. 2023's CD experiments).
    ddim:  ``alpha_s x0 + sigma_s (x - alpha_t x0) / sigma_t`` with ``x0 = D(x, t)`` (Song, Meng &
           Ermon 2021, eq. 12; LCM's solver).
    """
    if solver not in SOLVERS:
        raise DistillError(f"unknown teacher solver {solver!r} for consistency distillation; use one of {', '.join(SOLVERS)}")
    t_in, s_in = t.to(x.dtype), s.to(x.dtype)
    if solver == "ddim":
        x0 = predict(x, t_in, "x0")
        a_t, s_t = (expand_like(v, x) for v in (process.alpha(t).to(F64), process.sigma(t).to(F64)))
        a_s, s_s = (expand_like(v, x) for v in (process.alpha(s).to(F64), process.sigma(s).to(F64)))
        x64, x064 = x.to(F64), x0.to(F64)
        return (a_s * x064 + s_s * (x64 - a_t * x064) / s_t).to(x.dtype)
    h = expand_like(s - t, x).to(x.dtype)
    u = predict(x, t_in, "flow")
    if solver == "euler":
        return x + h * u
    u_next = predict(x + h * u, s_in, "flow")
    return x + h * 0.5 * (u + u_next)


def consistency_output(
    student: Denoiser, x: Tensor, t: Tensor, cond: Any, coefficients: tuple[Tensor, Tensor], **extra: Any
) -> Tensor:
    """``f(x, t) = c_skip(t) x + c_out(t) x0_theta(x, t)``; ``t`` [B] float64, the network reads x's dtype."""
    c_skip, c_out = (expand_like(c, x).to(x.dtype) for c in coefficients)
    return c_skip * x + c_out * student.predict(x, t.to(x.dtype), cond, **extra)


def huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """Huber of the per-sample L2 distance ``r``: ``r^2 / 2`` for ``r <= c``, else ``c (r - c / 2)``.

    The unsmoothed form of the pseudo-Huber distance of :mod:`distill.methods.distances`, with
    the same default ``c = 0.00054 sqrt(d)`` (Song & Dhariwal 2023, eq. 8). Returns [B].
    """
    diff = (a - b).reshape(a.shape[0], -1)
    c = 0.00054 * math.sqrt(diff.shape[1]) if c is None else c
    r = diff.pow(2).sum(dim=1).clamp_min(1e-30).sqrt()
    return torch.where(r <= c, 0.5 * r * r, c * (r - 0.5 * c))


def _distance(name: str) -> Callable[..., Tensor]:
    if name == "huber":
        return huber
    if name not in DISTANCES:
        raise DistillError(f"unknown distance {name!r}; use one of {', '.join((*DISTANCES, 'huber'))}")
    return DISTANCES[name]


@torch.no_grad()
def ema_into(target: nn.Module, source: nn.Module, mu: float) -> None:
    """``theta^- <- mu theta^- + (1 - mu) theta`` (Song et al. 2023, Algorithm 2), buffers copied."""
    for p_target, p_source in zip(target.parameters(), source.parameters()):
        p_target.lerp_(p_source.detach().to(p_target.dtype), 1.0 - mu)
    for b_target, b_source in zip(target.buffers(), source.buffers()):
        b_target.copy_(b_source)


# ---------------------------------------------------------------------------------------------
# the consistency function as a sampler's denoiser
# ---------------------------------------------------------------------------------------------


class ConsistencyFunction:
    """``f_theta`` with the Denoiser's calling convention, so the shared samplers can chain it.

    ``predict(x, t, cond, target="x0")`` returns ``f(x, t)`` (the estimate of the trajectory's
    data end), converted to ``target`` through the process; ``extra`` (e.g. ``w``) is passed
    to the student network on every call.
    """

    def __init__(self, student: Denoiser, parameterization: str, sigma_data: float, **extra: Any) -> None:
        self.student = student
        self.process = student.process
        self.parameterization = parameterization
        self.sigma_data = sigma_data
        self.extra = extra

    def predict(self, x: Tensor, t: Tensor, cond: Any = None, target: str = "x0") -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        coefficients = boundary_coefficients(self.process, t, self.parameterization, self.sigma_data)
        f = consistency_output(self.student, x, t.to(F64), cond, coefficients, **self.extra)
        return f if target == "x0" else self.process.convert(f, x, t, "x0", target)

    __call__ = predict


# ---------------------------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------------------------


@dataclass
class ConsistencyPair:
    """One batch of consistency-distillation inputs (Song et al. Algorithm 2).

    ``x_hi`` at ``t_hi = t_{n+k}`` is the forward-noised data; ``x_lo`` the teacher's one-step
    ODE estimate at ``t_lo = t_n`` from it; times float64 [B]; ``w`` the guidance scales [B]
    (``lcm``) or None.
    """

    x0: Tensor
    t_hi: Tensor
    t_lo: Tensor
    x_hi: Tensor
    x_lo: Tensor
    w: Tensor | None = None


class CD(Method):
    name = "cd"
    description = "consistency distillation with an EMA target and a one-step teacher ODE solver (Song et al. 2023)"
    paper = "arXiv:2303.01469"
    kinds = frozenset({"continuous"})
    step_agnostic = True  # any-step sampling of one trained student
    needs_data = True
    extra_inputs: tuple[str, ...] = ()  # extra network inputs of student and target (lcm: ("w",))

    @dataclass
    class Options:
        num_steps: int = 40  # N: intervals of the discretisation grid of [t_min, t_max]
        skip: int = 1  # k: the teacher jumps k grid points per step (LCM's skipping step)
        schedule: str = "uniform"  # grid spacing: uniform | karras | logsnr (distill.process.sampling_schedule)
        teacher_solver: str = "heun"  # euler | heun | ddim
        distance: str = "mse"  # mse | pseudo_huber | huber | l1
        distance_c: float | None = None  # c of pseudo_huber / huber (None: 0.00054 sqrt(d))
        target_ema: float = 0.95  # mu of the target network; 0: the stop-gradient student (no target role)
        parameterization: str = "edm"  # edm | ddim: c_skip, c_out of f = c_skip x + c_out x0_theta
        sigma_data: float = 0.5  # the edm parameterization's data scale
        lr: float = 1e-4
        sampler: str = "consistency"  # consistency (Song et al. Alg. 1) | tcd (Zheng et al. 2024)
        gamma: float = 0.3  # tcd: 0 deterministic, 1 = consistency sampling
        sample_schedule: str = "uniform"  # times of the multistep student sampler
        # clip the teacher's x0 to [-c, c] in its ODE step (diffusers' clip_sample; None: as predicted)
        teacher_clip_x0: float | None = None

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if int(o.num_steps) < 1 or not 1 <= int(o.skip) <= int(o.num_steps):
            raise DistillError(f"{self.name}: need num_steps >= 1 and 1 <= skip <= num_steps; got num_steps={o.num_steps}, skip={o.skip}")
        if o.teacher_solver not in SOLVERS:
            raise DistillError(f"{self.name}: teacher_solver must be one of {', '.join(SOLVERS)}; got {o.teacher_solver!r}")
        if o.parameterization not in PARAMETERIZATIONS:
            raise DistillError(f"{self.name}: parameterization must be one of {', '.join(PARAMETERIZATIONS)}; got {o.parameterization!r}")
        if not 0.0 <= o.target_ema < 1.0:
            raise DistillError(f"{self.name}: target_ema (mu) must be in [0, 1); got {o.target_ema} (0 uses the stop-gradient student)")
        if o.sampler not in SAMPLERS:
            raise DistillError(f"{self.name}: sampler must be 'consistency' (Song et al. Alg. 1) or 'tcd' (Zheng et al. 2024); got {o.sampler!r}")
        if not 0.0 <= o.gamma <= 1.0:
            raise DistillError(f"{self.name}: gamma must be in [0, 1] (0 deterministic, 1 = consistency sampling); got {o.gamma}")
        if o.parameterization == "edm" and not o.sigma_data > 0:
            raise DistillError(f"{self.name}: sigma_data must be > 0; got {o.sigma_data}")
        if o.teacher_clip_x0 is not None and not o.teacher_clip_x0 > 0:
            raise DistillError(f"{self.name}: teacher_clip_x0 must be a positive bound or None; got {o.teacher_clip_x0}")
        self.distance = _distance(o.distance)
        self._target_step = -1  # the last step whose EMA update of the target ran

    # --- roles -------------------------------------------------------------------------------
    def roles(self) -> list[Role]:
        o = self.options
        roles = [Role("student", lr=o.lr, extra_inputs=self.extra_inputs)]
        if o.target_ema > 0:
            # theta^-: a copy of the student that is never optimised (lr 0, no phase updates it);
            # being a role it is checkpointed, so a resumed run continues the same target.
            roles.append(Role("target", init="student", lr=0.0, grad_clip=None, extra_inputs=self.extra_inputs))
        return roles

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.grid = sampling_schedule(self.process, int(self.options.num_steps), kind=self.options.schedule)

    # --- pieces ------------------------------------------------------------------------------
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        o = self.options
        return boundary_coefficients(self.process, t, o.parameterization, o.sigma_data)

    def draw_guidance(self, batch: Batch) -> Tensor | None:
        """The guidance scales of a batch (``lcm``); ``cd`` draws none."""
        return None

    def network_inputs(self, w: Tensor | None) -> dict[str, Any]:
        """Extra network inputs of student and target (``lcm``: ``w``)."""
        return {}

    def pair(self, batch: Batch, roles: Roles) -> ConsistencyPair:
        """Draw ``n``, the forward noise and (lcm) ``w`` from the batch, and solve one teacher step.

        Draw order (tests replay it): index ``[B]``, noise like the data, then guidance ``[B]``.
        """
        if batch.x0 is None:
            raise DistillError(f"{self.name} trains on noised real data (Song et al. Alg. 2), but the batch has none; "
                               "use a modality with a data module")
        o, p, x0 = self.options, self.process, batch.x0
        grid = self.grid.to(x0.device)  # t_max first: grid[j] > grid[j + k]
        j = batch.randint(int(o.num_steps) - int(o.skip) + 1, batch.size)
        t_hi, t_lo = grid[j], grid[j + int(o.skip)]
        x_hi = p.add_noise(x0, batch.randn_like(x0), t_hi)
        w = self.draw_guidance(batch)
        teacher = roles.teacher

        def predict(x: Tensor, t: Tensor, target: str) -> Tensor:
            if o.teacher_clip_x0 is None:
                return guided_prediction(teacher, x, t, batch.cond, batch.null_cond, w, target)
            # as the teacher's own clipped sampler: x0 clipped, the other predictions derived from it.
            # An eps teacher near t_max (alpha ~ 0) otherwise returns x0 = (x - sigma eps) / alpha far
            # outside the data, and its ODE step scrambles where the trajectory is headed.
            c = float(o.teacher_clip_x0)
            x0 = guided_prediction(teacher, x, t, batch.cond, batch.null_cond, w, "x0").clamp(-c, c)
            return x0 if target == "x0" else p.convert(x0, x, t, "x0", target)

        with torch.no_grad():
            x_lo = ode_step(predict, p, x_hi, t_hi, t_lo, o.teacher_solver)
        return ConsistencyPair(x0=x0, t_hi=t_hi, t_lo=t_lo, x_hi=x_hi, x_lo=x_lo, w=w)

    def update_target(self, step: int, roles: Roles) -> None:
        """EMA of the target at the start of each step's loss (once per step).

        The engine steps the student's optimiser after the loss, so the update of Algorithm 2
        that follows step ``n - 1``'s optimiser step runs here, before step ``n``'s loss: the
        same sequence of targets, and a resumed run (the target is checkpointed) continues it.
        """
        if "target" in roles and step > self._target_step:
            ema_into(roles.target, roles.student, float(self.options.target_ema))
            self._target_step = step

    # --- loss --------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        self.update_target(batch.step, roles)
        pair = self.pair(batch, roles)
        extra = self.network_inputs(pair.w)
        f_student = consistency_output(roles.student, pair.x_hi, pair.t_hi, batch.cond, self.coefficients(pair.t_hi), **extra)
        target_net = roles.target if "target" in roles else roles.student
        with torch.no_grad():
            f_target = consistency_output(target_net, pair.x_lo, pair.t_lo, batch.cond, self.coefficients(pair.t_lo), **extra)
        c = self.options.distance_c
        distance = self.distance(f_student, f_target.detach(), c).mean()
        return Losses(total=distance, terms={"distance": distance})

    # --- the student sampler -------------------------------------------------------------------
    def student_timesteps(self, steps: int) -> Tensor:
        return sampling_schedule(self.process, steps, kind=self.options.sample_schedule)

    def sampling_inputs(self, n: int, device: torch.device) -> dict[str, Any]:
        """Extra network inputs at sampling time (``lcm``: the option ``guidance``)."""
        return {}

    def consistency_function(self, student: Denoiser, n: int, device: torch.device) -> ConsistencyFunction:
        o = self.options
        return ConsistencyFunction(student, o.parameterization, o.sigma_data, **self.sampling_inputs(n, device))

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        """The exported network is F; the student is ``c_skip x_t + c_out F`` (only ``sample`` applies it)."""
        return dict(super().sampler_spec(steps), name="method", method=self.name, sampler=self.options.sampler)

    def sample(
        self,
        student: Denoiser,
        noise: Tensor,
        cond: Any = None,
        steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """Multistep consistency sampling (Song et al. Alg. 1) or TCD's stochastic sampling.

        ``sampler: consistency``: ``x0 = f(x_{t_i}, t_i)``, ``x_{t_{i+1}} = alpha x0 + sigma z``
        (:func:`distill.samplers.multistep`); ``sampler: tcd``: the same chain with TCD's
        ``gamma`` (:func:`distill.samplers.consistency`; ``gamma = 1`` is the former).
        """
        if self.process is None:
            self.process = student.process
        process = student.process
        x_T = noise * process.sigma(torch.tensor(process.t_max, dtype=F64)).to(noise.dtype)
        f = self.consistency_function(student, noise.shape[0], noise.device)
        timesteps = self.student_timesteps(steps)
        if self.options.sampler == "tcd":
            return consistency(f, x_T, cond, timesteps=timesteps, generator=generator, gamma=float(self.options.gamma))
        return multistep(f, x_T, cond, timesteps=timesteps, generator=generator)


class LCM(CD):
    name = "lcm"
    description = "consistency distillation with guidance-scale conditioning and skipping steps (Luo et al. 2023)"
    paper = "arXiv:2310.04378"
    extra_inputs = ("w",)

    @dataclass
    class Options(CD.Options):
        teacher_solver: str = "ddim"  # LCM's solver (Luo et al. 2023, Sec. 4.3)
        skip: int = 2
        guidance_min: float = 1.0  # w ~ U[guidance_min, guidance_max] per sample (Denoiser convention)
        guidance_max: float = 4.0
        guidance: float = 1.0  # w the student is sampled with

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if not o.guidance_min <= o.guidance_max:
            raise DistillError(f"lcm: need guidance_min <= guidance_max; got {o.guidance_min} and {o.guidance_max}")

    def draw_guidance(self, batch: Batch) -> Tensor:
        o = self.options
        u = batch.rand(batch.size).to(F64)
        return o.guidance_min + (o.guidance_max - o.guidance_min) * u

    def network_inputs(self, w: Tensor | None) -> dict[str, Any]:
        return {"w": w.float()}

    def sampling_inputs(self, n: int, device: torch.device) -> dict[str, Any]:
        return {"w": torch.full((n,), float(self.options.guidance), device=device)}
