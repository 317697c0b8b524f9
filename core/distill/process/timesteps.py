"""Training-time samplers and sampling schedules over a process's time ``[t_min, t_max]``.

Normalised time ``u in [0, 1]`` maps to ``t = t_min + u (t_max - t_min)``. Every training sampler
has one signature, ``sampler(n, process, generator=None, device=None) -> Tensor[n]`` (float32,
within ``[t_min, t_max]``). ``sampling_schedule`` gives the decreasing times a solver visits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.process._names import build, unknown_name
from distill.process.gaussian import GaussianProcess

Device = torch.device | str | None

# Processes that reach pure noise (flow, trig: alpha(t_max) = 0) have log-SNR -> -inf at t_max; the
# karras and logsnr schedules place their interior points above this log-SNR (sigma/alpha ~ 1800).
LOGSNR_FLOOR = -15.0


def _f32_bounds(process: Any) -> tuple[float, float]:
    """[t_min, t_max] rounded inwards to float32, so float32 times never leave the range."""
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in (process.t_min, process.t_max))
    if lo.double() < process.t_min:
        lo = torch.nextafter(lo, torch.tensor(math.inf))
    if hi.double() > process.t_max:
        hi = torch.nextafter(hi, torch.tensor(-math.inf))
    return lo.item(), hi.item()


def _from_u(u: Tensor, process: Any) -> Tensor:
    """float64 normalised time -> float32 process time, clamped into [t_min, t_max]."""
    t = process.t_min + u * (process.t_max - process.t_min)
    return t.to(torch.float32).clamp(*_f32_bounds(process))


def _to_u(t: Tensor, process: Any) -> Tensor:
    return (t.to(torch.float64) - process.t_min) / (process.t_max - process.t_min)


class TimeSampler:
    """Base of the training time samplers: ``__call__(n, process, generator=None, device=None)``."""

    name: ClassVar[str]

    def __call__(
        self, n: int, process: GaussianProcess, generator: torch.Generator | None = None, device: Device = None
    ) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able record: ``make_time_sampler(**s.describe())`` rebuilds ``s``."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class UniformTime(TimeSampler):
    """u ~ U[0, 1] (Ho et al. 2020, Algorithm 1; Song et al. 2021)."""

    name: ClassVar[str] = "uniform"

    def __call__(self, n, process, generator=None, device=None):
        return _from_u(torch.rand(n, generator=generator, device=device, dtype=torch.float64), process)


@dataclass(frozen=True)
class LogNormalTime(TimeSampler):
    """EDM training noise: log(sigma / alpha) ~ N(p_mean, p_std^2) (Karras et al. 2022, Table 1, P_mean, P_std).

    Mapped to the process with ``t = process.t_at_snr(exp(-2 log(sigma/alpha)))`` and clamped to
    ``[t_min, t_max]``; on ``edm`` this is exactly ln t ~ N(p_mean, p_std^2).
    """

    p_mean: float = -1.2
    p_std: float = 1.2
    name: ClassVar[str] = "lognormal"

    def __call__(self, n, process, generator=None, device=None):
        log_ratio = self.p_mean + self.p_std * torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        t = process.t_at_snr(torch.exp(-2 * log_ratio))
        return t.to(torch.float32).clamp(*_f32_bounds(process))


@dataclass(frozen=True)
class LogitNormalTime(TimeSampler):
    """Logit-normal: u = sigmoid(n), n ~ N(mean, std^2) (Esser et al. 2024, SD3, sec. 3.1 logit-normal sampling)."""

    mean: float = 0.0
    std: float = 1.0
    name: ClassVar[str] = "logit_normal"

    def __call__(self, n, process, generator=None, device=None):
        z = self.mean + self.std * torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        return _from_u(torch.sigmoid(z), process)


@dataclass(frozen=True)
class ShiftedTime(TimeSampler):
    """Resolution shift of a base sampler: u' = s u / (1 + (s - 1) u) (Esser et al. 2024, SD3,
    resolution-dependent timestep shifting).

    s > 1 moves mass towards noise. ``base`` may be a sampler, a name, or a ``describe()`` dict.
    """

    base: Any = field(default_factory=UniformTime)
    shift: float = 3.0
    name: ClassVar[str] = "shifted"

    def __post_init__(self) -> None:
        base = self.base
        if isinstance(base, str):
            base = make_time_sampler(base)
        elif isinstance(base, dict):
            base = make_time_sampler(**base)
        object.__setattr__(self, "base", base)
        if not self.shift > 0:
            raise DistillError(f"shifted time sampler: shift must be > 0, got {self.shift}")

    def __call__(self, n, process, generator=None, device=None):
        u = _to_u(self.base(n, process, generator=generator, device=device), process)
        return _from_u(self.shift * u / (1 + (self.shift - 1) * u), process)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.describe(), "shift": self.shift}


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    c.name: c for c in (UniformTime, LogNormalTime, LogitNormalTime, ShiftedTime)
}


def make_time_sampler(name: str, **kwargs: Any) -> TimeSampler:
    """Build a training time sampler by name: uniform, lognormal, logit_normal, shifted."""
    return build("time sampler", TIME_SAMPLERS, name, kwargs)


SCHEDULES = ("uniform", "karras", "logsnr")


def sampling_schedule(process: GaussianProcess, steps: int, kind: str = "uniform", rho: float = 7.0) -> Tensor:
    """Times ``t_0 = t_max > t_1 > ... > t_steps = t_min`` (float64, strictly decreasing) for a solver.

    uniform: linear in t.
    karras:  EDM's rho schedule (Karras et al. 2022, eq. 5) on the equivalent EDM noise level
             sigma/alpha, mapped back with ``t_at_snr``.
    logsnr:  uniform in log-SNR (DPM-Solver, Lu et al. 2022: its 'logSNR' step spacing).
    For processes with alpha(t_max) = 0 (flow, trig) the top end is pure noise; there the first
    point stays t_max and the others are spread from log-SNR ``LOGSNR_FLOOR`` = -15.
    """
    if kind not in SCHEDULES:
        raise unknown_name("sampling schedule", kind, SCHEDULES)
    if int(steps) != steps or steps < 1:
        raise DistillError(f"sampling schedule needs steps >= 1 (an integer), got {steps}")
    steps = int(steps)
    f64 = torch.float64
    if kind == "uniform":
        t = torch.linspace(process.t_max, process.t_min, steps + 1, dtype=f64)
    else:
        lam_lo = process.log_snr(torch.tensor(process.t_max, dtype=f64)).clamp(min=LOGSNR_FLOOR)
        lam_hi = process.log_snr(torch.tensor(process.t_min, dtype=f64))
        if not lam_hi > lam_lo:
            raise DistillError(f"process '{process.name}' has log-SNR below {LOGSNR_FLOOR} at t_min; use kind='uniform'")
        if kind == "karras":
            s_max, s_min = torch.exp(-lam_lo / 2) ** (1 / rho), torch.exp(-lam_hi / 2) ** (1 / rho)
            ratio = (s_max + torch.linspace(0, 1, steps + 1, dtype=f64) * (s_min - s_max)) ** rho
            lam = -2 * torch.log(ratio)
        else:
            lam = torch.linspace(float(lam_lo), float(lam_hi), steps + 1, dtype=f64)
        t = process.t_at_snr(torch.exp(lam)).to(f64)
        t[0], t[-1] = process.t_max, process.t_min
    if not bool((t[1:] < t[:-1]).all()):
        raise DistillError(
            f"{kind} schedule with {steps} steps is not strictly decreasing on process '{process.name}'; use fewer steps"
        )
    return t
