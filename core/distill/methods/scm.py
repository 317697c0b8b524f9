"""Continuous-time consistency distillation in TrigFlow (``scm``).

Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency
Models" (sCM, arXiv:2410.11081). TrigFlow (sec. 3) writes, with data std ``sigma_d``,

    x_t = cos(t) x0 + sin(t) z,   z ~ N(0, sigma_d^2 I),   t in [0, pi/2],            (eq. 2 ff.)

and the consistency function (eq. 6)

    f_theta(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t / sigma_d, t),

whose boundary condition ``f(x, 0) = x`` is built in. With ``theta^-`` = stopgrad(theta)
and the teacher's PF-ODE velocity ``dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t)``,

    df^-/dt = -cos(t) (sigma_d F^- - dx_t/dt) - sin(t) (x_t + sigma_d dF^-/dt),         (eq. 7)

and the trained loss with the learned adaptive weighting ``w_phi(t)`` (eq. 8, Alg. 1) is

    g  = -cos^2(t) (sigma_d F^- - dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF^-/dt)
    g <- g / (||g|| + c)                                                   (tangent normalisation)
    L  = e^{w_phi(t)} / D || F_theta - F^- - g ||^2 - w_phi(t)

``r = min(1, step / warmup_steps)`` is the tangent warm-up, times are drawn as
``tan(t) = e^tau / sigma_d``, ``tau ~ N(P_mean, P_std^2)`` (sec. 4.2).

**Any teacher process.** The roles are Denoisers over the teacher's process
``x_s = alpha(s) x0 + sigma(s) eps``. TrigFlow time ``t`` and process time ``s`` describe
the same noisy distribution when their SNRs agree (:func:`trig_map`):

    alpha(s)^2 / sigma(s)^2 = cos(t)^2 / (sigma_d^2 sin(t)^2),     x_s = c(t) x_t,
    c(t) = alpha(s) / cos(t) = sqrt(alpha(s)^2 + sigma(s)^2 / sigma_d^2).

Then ``f_theta(x_t, t)`` *is* the student's x0 prediction at ``(c x_t, s)``, and
``sigma_d F_theta = sigma_d cos(t) eps_theta - sin(t) x0_theta`` is its TrigFlow velocity
(the ``v`` prediction of the :class:`~distill.process.Trig` process on ``x / sigma_d``),
whatever the network's native prediction. Since ``cos(t) df/dt = g1 + g2`` with
``g1 = -cos^2 (sigma_d F^- - dx_t/dt)``, the warmed-up tangent is

    g = (1 - r) g1 + r cos(t) df^-/dt,     df^-/dt = d/dt x0_theta^-(c(t) x_t, s(t)),

and ``df^-/dt`` is one forward-mode JVP of the student's x0 prediction with tangents
``(dx_s/dt, ds/dt) = (c dx_t/dt + c' x_t, s')`` (closed forms in :func:`trig_map`), or a
central finite difference in ``t`` when forward-mode AD is unavailable.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, Role, Roles
from distill.nets.embeddings import sinusoidal_embedding
from distill.process import GaussianProcess, Trig, expand_like

TANGENTS = ("jvp", "finite_difference")


# ---------------------------------------------------------------------------------------------
# TrigFlow <-> any Gaussian process (pure math)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrigMap:
    """A TrigFlow time ``t`` seen by a process (all float64, shape of ``t``).

    ``s``: the process time with the same SNR; ``c``: the input scale, ``x_s = c x_t``;
    ``ds``, ``dc``: ``ds/dt`` and ``dc/dt``.
    """

    s: Tensor
    c: Tensor
    ds: Tensor
    dc: Tensor


def trig_map(process: GaussianProcess, t: Tensor, sigma_d: float) -> TrigMap:
    """Match TrigFlow time ``t`` (data std ``sigma_d``) to ``process`` by SNR.

    ``x_t = cos t x0 + sigma_d sin t eps`` and ``x_s = alpha x0 + sigma eps`` have the same
    SNR when ``alpha / sigma = cos t / (sigma_d sin t)``, i.e. ``s = t_at_snr(cot^2 t / sigma_d^2)``;
    then ``x_s = c x_t`` with ``c = alpha / cos t = sqrt(alpha^2 + sigma^2 / sigma_d^2)`` (the
    second form is finite at t = pi/2). Differentiating ``sigma / alpha = sigma_d tan t``:

        ds/dt = sigma_d c^2 / (alpha sigma' - sigma alpha'),
        dc/dt = (alpha alpha' + sigma sigma' / sigma_d^2) (ds/dt) / c,

    with ``alpha', sigma'`` the process's time derivatives at ``s``. Both are finite on the
    whole of ``[0, pi/2]``, and they use only ``alpha, sigma`` and their derivatives, so the
    JVP is exact even for processes whose ``t_at_snr`` is a bisection.
    """
    t = torch.as_tensor(t).to(torch.float64)
    snr = (torch.cos(t) / (sigma_d * torch.sin(t))) ** 2
    s = process.t_at_snr(snr).to(torch.float64).clamp(float(process.t_min), float(process.t_max))
    a, sg = process.alpha(s), process.sigma(s)
    da, dsg = process.d_alpha(s), process.d_sigma(s)
    c = torch.sqrt(a * a + (sg / sigma_d) ** 2)
    ds = sigma_d * c * c / (a * dsg - sg * da)
    dc = (a * da + sg * dsg / sigma_d**2) * ds / c
    return TrigMap(s=s, c=c, ds=ds, dc=dc)


def trig_time(process: GaussianProcess, s: Tensor | float, sigma_d: float) -> Tensor:
    """The TrigFlow time of process time ``s``: ``t = atan2(sigma(s), sigma_d alpha(s))`` (float64)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return torch.atan2(process.sigma(s), sigma_d * process.alpha(s))


def x0_eps(denoiser: Denoiser, x: Tensor, s: Tensor, cond: Any = None, null_cond: Any = None,
           guidance: float | None = None) -> tuple[Tensor, Tensor]:
    """(x0, eps) of ``denoiser`` at ``(x, s)`` in float64, from one native prediction.

    Guidance mixes the native outputs (``x_u + w (x_c - x_u)``); every conversion is affine in
    the prediction for fixed ``(x, s)``, so this equals guiding x0 and eps.
    """
    native = denoiser.prediction
    if guidance is None:
        out = denoiser.predict(x, s, cond, target=native)
    else:
        out = denoiser.guided(x, s, cond, null_cond, float(guidance), target=native)
    return denoiser.process.to_x0_eps(out, x, s, native)


def tangent_weighting(g: Tensor, c: float) -> Tensor:
    """Tangent normalisation ``g / (||g|| + c)`` with the L2 norm per sample (sCM sec. 4.2)."""
    norm = g.flatten(1).norm(dim=1)
    return g / expand_like(norm + c, g)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Tangent warm-up ``r = min(1, step / H)`` (sCM sec. 4.2); ``H = 0`` means no warm-up."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


@dataclass
class SCMTargets:
    """One batch of sCD (float64 unless noted; shapes [B] or [B, ...]).

    ``t``: TrigFlow times; ``x_t``: noised data (data dtype); ``dxdt``: the teacher's
    ``sigma_d F_teacher``; ``v_theta``: the student's ``sigma_d F_theta`` (with its graph);
    ``dfdt``: ``df^-/dt``; ``r``: the warm-up factor; ``g``: the normalised tangent and
    ``g_norm`` its norm before normalisation.
    """

    t: Tensor
    x_t: Tensor
    dxdt: Tensor
    v_theta: Tensor
    dfdt: Tensor
    r: float
    g: Tensor
    g_norm: Tensor


class AdaptiveWeighting(nn.Module):
    """``w_phi(t)``: a scalar per TrigFlow time (sCM eq. 8), one small MLP.

    Input: sinusoidal features of ``tau = log(sigma_d tan t)`` (the log noise-to-signal
    ratio, the variable the time proposal is Gaussian in), clamped to [-12, 12]; then
    ``Linear - SiLU - Linear``. The last layer starts at zero, so ``w = 0`` (unit weight).
    """

    def __init__(self, sigma_d: float, features: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.sigma_d = float(sigma_d)
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.config = {"sigma_d": self.sigma_d, "features": features, "hidden": hidden}

    def forward(self, t: Tensor) -> Tensor:
        t = t.to(torch.float64)
        tau = (math.log(self.sigma_d) + torch.log(torch.tan(t))).clamp(-12.0, 12.0)
        emb = sinusoidal_embedding(tau, self.features, max_period=100.0)
        return self.mlp(emb.to(self.mlp[0].weight.dtype)).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------


class SCM(Method):
    name = "scm"
    description = "continuous-time consistency distillation in TrigFlow with JVP tangents (Lu & Song 2024)"
    paper = "arXiv:2410.11081"
    kinds = frozenset({"continuous"})
    step_agnostic = True  # any-step sampling of one trained student
    needs_data = True

    @dataclass
    class Options:
        sigma_d: float = 0.5  # TrigFlow's data std (0.5 for images in [-1, 1], as in the paper)
        p_mean: float = -1.0  # time proposal: tan t = exp(tau) / sigma_d, tau ~ N(p_mean, p_std^2)
        p_std: float = 1.4  # (the paper: -1.0, 1.4 on CIFAR-10 / ImageNet 64; -0.8, 1.6 for sCD at 512)
        warmup_steps: int = 10000  # tangent warm-up H: r = min(1, step / H)
        tangent: str = "jvp"  # jvp | finite_difference (jvp falls back to it with a warning)
        fd_step: float = 1e-3  # TrigFlow-time step of the central finite difference
        tangent_c: float = 0.1  # c of the tangent normalisation g / (||g|| + c)
        adaptive_weighting: bool = True  # learn w_phi(t) (role "weighting"); False: w = 0
        lr: float = 1e-4
        weighting_lr: float | None = None  # None: lr
        student_prediction: str = "v"  # prediction type of a *fresh* student (v = TrigFlow's F)
        guidance: float | None = None  # CFG scale on the teacher velocity
        sample_times: list[float] | None = None  # TrigFlow times after pi/2 of the student sampler

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if not o.sigma_d > 0:
            raise DistillError(f"scm: sigma_d (the data std) must be > 0; got {o.sigma_d}")
        if not o.p_std > 0:
            raise DistillError(f"scm: p_std must be > 0; got {o.p_std}")
        if o.tangent not in TANGENTS:
            raise DistillError(f"scm: tangent must be one of {', '.join(TANGENTS)}; got {o.tangent!r}")
        if not 0 < o.fd_step < 0.1:
            raise DistillError(f"scm: fd_step must be in (0, 0.1) (TrigFlow time spans [0, pi/2]); got {o.fd_step}")
        if o.tangent_c < 0 or o.warmup_steps < 0:
            raise DistillError("scm: tangent_c and warmup_steps must be >= 0")
        if o.sample_times is not None and not all(0 < float(t) < math.pi / 2 for t in o.sample_times):
            raise DistillError(f"scm: sample_times are TrigFlow times in (0, pi/2); got {list(o.sample_times)}")
        self.trig = Trig()
        self._tangent = o.tangent

    # --- roles -------------------------------------------------------------------
    def roles(self) -> list[Role]:
        o = self.options
        roles = [Role("student", lr=o.lr, prediction=o.student_prediction)]
        if o.adaptive_weighting:
            roles.append(Role("weighting", init="method", denoiser=False, lr=o.weighting_lr or o.lr))
        return roles

    def phase_roles(self, phase: str) -> list[str]:
        return ["student", "weighting"] if self.options.adaptive_weighting else ["student"]

    def build_role(self, role: Role, roles: Roles, modality) -> nn.Module:
        return AdaptiveWeighting(self.options.sigma_d)

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        if "teacher" in roles and roles.teacher.process.describe() != self.process.describe():
            raise DistillError(
                f"scm: the student's process ({self.process.name}) differs from the teacher's "
                f"({roles.teacher.process.name}); build the student over the teacher's process"
            )

    # --- time ----------------------------------------------------------------------
    def time_range(self) -> tuple[float, float]:
        """TrigFlow times of the process's ``t_min`` and ``t_max`` (pi/2 for flow and trig)."""
        p, sd = self.process, self.options.sigma_d
        return float(trig_time(p, p.t_min, sd)), float(trig_time(p, p.t_max, sd))

    def sample_t(self, batch: Batch) -> Tensor:
        """``t = arctan(e^tau / sigma_d)``, ``tau ~ N(P_mean, P_std^2)`` (float64 [B], sCM sec. 4.2)."""
        o = self.options
        lo, hi = self.time_range()
        tau = o.p_mean + o.p_std * batch.randn_like(torch.empty(batch.size, dtype=torch.float64, device=batch.device))
        return torch.atan2(torch.exp(tau), torch.full_like(tau, o.sigma_d)).clamp(lo, hi)

    def sampler_times(self, steps: int) -> list[float]:
        """The TrigFlow times of a ``steps``-step student: pi/2 (the process's t_max) first.

        The times are set by the noise fraction ``u = rho / (1 + rho)`` of the noise-to-signal
        ratio ``rho = sigma_d tan t`` (a rectified-flow teacher's own time), ``t = atan2(u,
        sigma_d (1 - u))``. Default: the first re-noising at ``u = 1/2`` (for ``sigma_d = 0.5``
        that is ``t = arctan 2 = 1.107``, the paper's two-step ``t = 1.1``), the others uniform in
        ``u`` below it: ``u_i = (steps - i) / (2 (steps - 1))``, i.e. 1/2; 1/2, 1/4; 1/2, 1/3, 1/6
        for 2, 3, 4 steps. ``options.sample_times`` (``steps - 1`` TrigFlow times) overrides them.
        """
        o = self.options
        lo, hi = self.time_range()
        if o.sample_times is not None:
            if len(o.sample_times) != steps - 1:
                raise DistillError(
                    f"scm: sample_times holds {len(o.sample_times)} TrigFlow times but a {steps}-step student "
                    f"needs {steps - 1} (the first step is at pi/2); set method_args.sample_times accordingly"
                )
            rest = [float(t) for t in o.sample_times]
        else:
            u = [(steps - i) / (2 * (steps - 1)) for i in range(1, steps)]
            rest = [math.atan2(v, o.sigma_d * (1 - v)) for v in u]
        times = [hi] + [min(max(t, lo), hi) for t in rest]
        if any(b >= a for a, b in zip(times, times[1:])):
            raise DistillError(f"scm: the sampler's TrigFlow times must decrease from pi/2; got {times}")
        return times

    def student_timesteps(self, steps: int) -> Tensor:
        """The sampler's TrigFlow times mapped to the process's time by SNR, then ``t_min``.

        The student's x0 prediction at ``(c x_t, s)`` is ``f(x_t, t)``, and re-noising
        ``x_t = cos t x0 + sigma_d sin t z`` is ``x_s = alpha(s) x0 + sigma(s) z`` after the
        scaling by ``c``, so the base class's multistep sampler in process time is exactly
        consistency sampling in TrigFlow (Song et al. 2023, Alg. 1; sCM sec. 6).
        """
        t = torch.tensor(self.sampler_times(steps), dtype=torch.float64)
        s = trig_map(self.process, t, self.options.sigma_d).s
        return torch.cat([s, torch.tensor([float(self.process.t_min)], dtype=torch.float64)])

    # --- the tangent df/dt --------------------------------------------------------
    def tangent(self, student: Denoiser, x_t: Tensor, t: Tensor, dxdt: Tensor, cond: Any = None) -> Tensor:
        """``df^-/dt`` along ``dx_t/dt = dxdt`` at TrigFlow ``(x_t, t)`` (float64, no graph).

        ``f = x0_theta(c(t) x_t, s(t))``; JVP with tangents ``(c dxdt + c' x_t, s')``, or the
        central difference ``(f(t+h) - f(t-h)) / 2h`` along ``x_t + (t' - t) dxdt`` (one-sided
        at the ends of the time range).
        """
        process, sd = student.process, self.options.sigma_d

        def f_at(x_s: Tensor, s: Tensor) -> Tensor:
            return x0_eps(student, x_s, s, cond)[0]

        with torch.no_grad():
            if self._tangent == "jvp":
                m = trig_map(process, t, sd)
                c, dc = expand_like(m.c, x_t), expand_like(m.dc, x_t)
                x_s = (c * x_t).to(x_t.dtype)
                dx_s = (c * dxdt + dc * x_t).to(x_t.dtype)
                try:
                    return torch.func.jvp(f_at, (x_s, m.s.to(x_t.dtype)), (dx_s, m.ds.to(x_t.dtype)))[1]
                except (RuntimeError, NotImplementedError, TypeError) as error:
                    warnings.warn(
                        f"scm: torch.func.jvp failed on {type(student.net).__name__} ({str(error).splitlines()[0]}); "
                        "using the finite-difference tangent from now on (set method_args.tangent=finite_difference "
                        "to silence this)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self._tangent = "finite_difference"
            lo, hi = self.time_range()
            h = self.options.fd_step
            t_plus, t_minus = (t + h).clamp(max=hi), (t - h).clamp(min=lo)

            def f_along(t_: Tensor) -> Tensor:
                m = trig_map(process, t_, sd)
                x = x_t.to(torch.float64) + expand_like(t_ - t, x_t) * dxdt.to(torch.float64)
                return f_at((expand_like(m.c, x_t) * x).to(x_t.dtype), m.s.to(x_t.dtype))

            return (f_along(t_plus) - f_along(t_minus)) / expand_like(t_plus - t_minus, x_t)

    # --- the loss -------------------------------------------------------------------
    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``sigma_d F = sigma_d cos(t) eps - sin(t) x0``: TrigFlow's v of ``x / sigma_d``, times sigma_d."""
        sd = self.options.sigma_d
        return sd * self.trig.from_x0_eps(x0 / sd, eps, t, "v")

    def targets(self, batch: Batch, roles: Roles) -> SCMTargets:
        """Everything the loss needs at one batch (sCD, Alg. 1), with the student's graph on ``v_theta``."""
        o = self.options
        if batch.x0 is None:
            raise DistillError("scm trains on noised real data (sCD, Alg. 1), but the batch has none; use a modality with data")
        student, teacher = roles.student, roles.teacher
        x0 = batch.x0
        t = self.sample_t(batch)
        cos, sin = expand_like(torch.cos(t), x0), expand_like(torch.sin(t), x0)
        x_t = (cos * x0.to(torch.float64) + sin * o.sigma_d * batch.noise.to(torch.float64)).to(x0.dtype)
        m = trig_map(self.process, t, o.sigma_d)
        x_s, s = (expand_like(m.c, x_t) * x_t).to(x0.dtype), m.s.to(x0.dtype)

        with torch.no_grad():
            dxdt = self.velocity(*x0_eps(teacher, x_s, s, batch.cond, batch.null_cond, o.guidance), t)
        v_theta = self.velocity(*x0_eps(student, x_s, s, batch.cond), t)  # sigma_d F_theta, with its graph
        v_minus = v_theta.detach()
        dfdt = self.tangent(student, x_t, t, dxdt, batch.cond)

        r = warmup_factor(batch.step, o.warmup_steps)
        g1 = -cos * cos * (v_minus - dxdt)
        g = (1 - r) * g1 + r * cos * dfdt  # = g1 + r g2, since g1 + g2 = cos(t) df/dt
        return SCMTargets(t=t, x_t=x_t, dxdt=dxdt, v_theta=v_theta, dfdt=dfdt, r=r,
                          g=tangent_weighting(g, o.tangent_c), g_norm=g.flatten(1).norm(dim=1))

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        o = self.options
        k = self.targets(batch, roles)
        dim = k.x_t[0].numel()
        # F_theta - F^- - g with F = v / sigma_d (the F difference is 0 in value, not in gradient)
        diff = (k.v_theta - k.v_theta.detach()) / o.sigma_d - k.g
        sq = diff.pow(2).flatten(1).sum(dim=1) / dim
        w = roles.weighting(k.t).to(sq.dtype) if o.adaptive_weighting else torch.zeros_like(sq)
        total = (torch.exp(w) * sq - w).mean()  # sCM eq. 8
        terms = {
            "consistency": sq.mean().detach(),
            "tangent_norm": k.g_norm.mean().detach(),
            "weight": w.mean().detach(),
            "warmup": torch.tensor(k.r),
        }
        return Losses(total=total.float(), terms={name: v.float() for name, v in terms.items()})


__all__ = ["SCM", "SCMTargets", "TrigMap", "trig_map", "trig_time", "x0_eps", "tangent_weighting", "warmup_factor", "AdaptiveWeighting"]
