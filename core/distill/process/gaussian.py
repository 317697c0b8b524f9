"""Continuous Gaussian forward processes and conversions between prediction types.

Every process writes (Ho et al. 2020, DDPM eq. 4; Kingma et al. 2021 notation)

    x_t = alpha(t) x0 + sigma(t) eps,   eps ~ N(0, I),

with time ``t`` increasing with noise on ``[t_min, t_max]``. A network may predict any of
``PREDICTIONS``; with ``a, s = alpha(t), sigma(t)`` and ``a', s'`` their time derivatives:

    x0
    eps
    v     = a eps - s x0                 (Salimans & Ho 2022, sec. 4, for any a, s)
    flow  = d x_t / dt = a' x0 + s' eps  (the probability-flow ODE velocity in this process's own
                                          time; Liu et al. 2022 / Lipman et al. 2022 for a=1-t, s=t)
    score = grad log p_t(x_t) = -E[eps | x_t] / s  (Song et al. 2021; Tweedie's formula)

Conversions solve the 2x2 linear system for ``(x0, eps)`` in float64 and return the
requested prediction in the input's dtype.

Families: ``vp`` (cosine, Nichol & Dhariwal 2021), ``vp_linear`` (Song et al. 2021 VP-SDE),
``vp_discrete`` (DDPM ``alphas_cumprod`` as in diffusers / LeRobot schedulers), ``edm``
(Karras et al. 2022), ``flow`` (rectified flow), ``trig`` (TrigFlow, Lu & Song 2024).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.process._names import build, unknown_name

PREDICTIONS = ("x0", "eps", "v", "flow", "score")

TimeLike = Tensor | float


def expand_like(t: TimeLike, x: Tensor) -> Tensor:
    """Reshape ``t`` of shape [B] (or a scalar) to [B, 1, ..., 1] so it broadcasts over ``x``."""
    t = torch.as_tensor(t, device=x.device)
    return t if t.ndim == 0 else t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def _time(t: TimeLike) -> Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _derivative(fn: Callable[[Tensor], Tensor], t: TimeLike) -> Tensor:
    """Elementwise d fn / dt by autograd in float64 (the fallback for families without a closed form)."""
    t = _time(t)
    with torch.enable_grad():
        x = t.detach().to(torch.float64).requires_grad_(True)
        y = fn(x)
        if not y.requires_grad:  # constant in t
            return torch.zeros_like(t)
        (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return (torch.zeros_like(x) if g is None else g).to(t.dtype)


def _check_prediction(name: str) -> None:
    if name not in PREDICTIONS:
        raise unknown_name("prediction type", name, PREDICTIONS)


class GaussianProcess:
    """Base class: ``x_t = alpha(t) x0 + sigma(t) eps`` on ``t in [t_min, t_max]``.

    Subclasses give ``alpha`` and ``sigma``; the base supplies autograd derivatives, the SNR, a
    bisection ``t_at_snr`` and the prediction conversions. ``alpha, sigma, d_alpha, d_sigma, snr,
    log_snr`` return tensors of the dtype and device of ``t``.
    """

    name: ClassVar[str] = "gaussian"
    t_min: float
    t_max: float

    def __post_init__(self) -> None:
        if not self.t_min < self.t_max:
            raise DistillError(f"process '{self.name}': need t_min < t_max, got {self.t_min} and {self.t_max}")
        lo = torch.tensor(self.t_min, dtype=torch.float64)
        if not (self.alpha(lo) > 0 and self.sigma(lo) > 0):
            raise DistillError(f"process '{self.name}': alpha and sigma must be > 0 at t_min={self.t_min}; raise t_min")

    # -- schedule ------------------------------------------------------------------------------
    def alpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: TimeLike) -> Tensor:
        """d alpha / dt (base: autograd in float64; families override with closed forms)."""
        return _derivative(self.alpha, t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        """d sigma / dt (base: autograd in float64; families override with closed forms)."""
        return _derivative(self.sigma, t)

    def snr(self, t: TimeLike) -> Tensor:
        """Signal-to-noise ratio alpha^2 / sigma^2 (Kingma et al. 2021, VDM)."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def log_snr(self, t: TimeLike) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), strictly decreasing in t (DPM-Solver, Lu et al. 2022)."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        """The t with ``snr(t) == snr`` (base: 64 bisection steps on log_snr in float64).

        Families give closed forms, valid over their natural domain; this fallback clamps to
        ``[t_min, t_max]``. Returns snr's dtype.
        """
        snr = _time(snr)
        target = torch.log(snr.to(torch.float64))
        lo, hi = torch.full_like(target, self.t_min), torch.full_like(target, self.t_max)
        for _ in range(64):
            mid = (lo + hi) / 2
            cleaner = self.log_snr(mid) > target  # log_snr decreases in t: the answer lies to the right
            lo, hi = torch.where(cleaner, mid, lo), torch.where(cleaner, hi, mid)
        return ((lo + hi) / 2).to(snr.dtype)

    # -- forward process -----------------------------------------------------------------------
    def add_noise(self, x0: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps, with t [B] broadcast over x's trailing dims (DDPM eq. 4)."""
        a = expand_like(self.alpha(t), x0).to(x0.dtype)
        s = expand_like(self.sigma(t), x0).to(x0.dtype)
        return a * x0 + s * eps

    def prior(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The sampler's start x_T ~ N(0, sigma(t_max)^2 I).

        Assumes zero-mean data: the ``alpha(t_max) x0`` term is dropped, which is exact for
        ``flow`` and ``trig`` (alpha(t_max) = 0) and negligible for the VP and EDM defaults.
        """
        s = float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))
        return s * torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    # -- conversions ---------------------------------------------------------------------------
    def _coef(self, t: TimeLike, x: Tensor, derivatives: bool = False) -> tuple[Tensor, ...]:
        t = _time(t).to(device=x.device, dtype=torch.float64)
        fns = (self.alpha, self.sigma) + ((self.d_alpha, self.d_sigma) if derivatives else ())
        return tuple(expand_like(f(t), x) for f in fns)

    def to_x0_eps(self, pred: Tensor, x_t: Tensor, t: TimeLike, source: str) -> tuple[Tensor, Tensor]:
        """Solve ``x_t = a x0 + s eps`` and the definition of ``source`` for (x0, eps), in float64.

        eps:   x0 = (x_t - s eps) / a
        x0:    eps = (x_t - a x0) / s
        v:     x0 = (a x_t - s v) / (a^2 + s^2),        eps = (s x_t + a v) / (a^2 + s^2)
        flow:  x0 = (s' x_t - s u) / (a s' - s a'),     eps = (a u - a' x_t) / (a s' - s a')
        score: eps = -s score
        """
        _check_prediction(source)
        p, x = pred.to(torch.float64), x_t.to(torch.float64)
        if source == "flow":
            a, s, da, ds = self._coef(t, x, derivatives=True)
            det = a * ds - s * da
            return (ds * x - s * p) / det, (a * p - da * x) / det
        a, s = self._coef(t, x)
        if source == "x0":
            return p, (x - a * p) / s
        if source == "v":
            norm = a * a + s * s
            return (a * x - s * p) / norm, (s * x + a * p) / norm
        eps = p if source == "eps" else -s * p
        return (x - s * eps) / a, eps

    def from_x0_eps(self, x0: Tensor, eps: Tensor, t: TimeLike, target: str) -> Tensor:
        """The prediction ``target`` for given (x0, eps), computed in float64, returned in x0's dtype.

        Also the training target of a network that predicts ``target``.
        """
        _check_prediction(target)
        if target == "x0":
            return x0
        if target == "eps":
            return eps.to(x0.dtype)
        x, e = x0.to(torch.float64), eps.to(torch.float64)
        if target == "flow":
            _, _, da, ds = self._coef(t, x, derivatives=True)
            out = da * x + ds * e
        else:
            a, s = self._coef(t, x)
            out = a * e - s * x if target == "v" else -e / s
        return out.to(x0.dtype)

    def convert(self, pred: Tensor, x_t: Tensor, t: TimeLike, source: str, target: str) -> Tensor:
        """Convert a ``source`` prediction at (x_t, t) to ``target``, through (x0, eps) in float64.

        Returns ``pred.dtype``. Unknown names raise DistillError listing ``PREDICTIONS``.
        """
        _check_prediction(source)
        _check_prediction(target)
        if source == target:
            return pred
        x0, eps = self.to_x0_eps(pred, x_t, t, source)
        return self.from_x0_eps(x0, eps, t, target).to(pred.dtype)

    def describe(self) -> dict[str, Any]:
        """JSON-able constructor record: ``make_process(**p.describe())`` rebuilds ``p``."""
        args = {f.name: getattr(self, f.name) for f in fields(self)} if is_dataclass(self) else {}
        return {"name": self.name, **args}


@dataclass(frozen=True, eq=False)
class VPCosine(GaussianProcess):
    """Continuous cosine VP process: alpha = cos(pi t / 2), sigma = sin(pi t / 2).

    Nichol & Dhariwal 2021, eq. 17 (without the offset s, as in its continuous-time use by
    DPM-Solver, Lu et al. 2022). ``t_min = 1e-3`` gives sigma ~ 1.6e-3, the order of EDM's
    sigma_min = 0.002. ``t_max = 0.9946`` is DPM-Solver's end time for the cosine schedule (where
    its continuous beta(t) reaches 999, the analogue of Nichol & Dhariwal's beta clip); there
    alpha ~ 8.5e-3, log-SNR ~ -9.5.
    """

    t_min: float = 1e-3
    t_max: float = 0.9946
    name: ClassVar[str] = "vp"

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.cos(_time(t) * (math.pi / 2))

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.sin(_time(t) * (math.pi / 2))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return -(math.pi / 2) * self.sigma(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return (math.pi / 2) * self.alpha(t)

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        """tan(pi t / 2) = sigma / alpha = snr^(-1/2)."""
        snr = _time(snr)
        return torch.atan2(torch.ones_like(snr), snr.sqrt()) * (2 / math.pi)


@dataclass(frozen=True, eq=False)
class VPLinear(GaussianProcess):
    """VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 11).

    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,  sigma = sqrt(1 - alpha^2).
    ``t_min = 1e-3`` is Song et al.'s epsilon.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0
    name: ClassVar[str] = "vp_linear"

    def _log_alpha(self, t: TimeLike) -> Tensor:
        t = _time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(self._log_alpha(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))  # accurate near t = 0

    def d_alpha(self, t: TimeLike) -> Tensor:
        """alpha' = -beta(t) alpha / 2."""
        t = _time(t)
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min)) * self.alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        """sigma' = -alpha alpha' / sigma (from alpha^2 + sigma^2 = 1)."""
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t: TimeLike) -> Tensor:
        la2 = 2 * self._log_alpha(t)
        return la2 - torch.log(-torch.expm1(la2))

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        """Solve (beta_max - beta_min) t^2 / 2 + beta_min t = c with c = log(1 + 1/snr) (stable root)."""
        snr = _time(snr)
        c = torch.log1p(1 / snr)
        d, b = self.beta_max - self.beta_min, self.beta_min
        return 2 * c / (b + torch.sqrt(b * b + 2 * d * c))


class VPDiscrete(GaussianProcess):
    """Discrete-time DDPM (Ho et al. 2020, eq. 4) given by ``alphas_cumprod`` (alpha-bar), in continuous time.

    With T = len(alphas_cumprod), t in [0, 1] maps to the fractional index ``t (T - 1)``. The
    log-SNR ``log(abar / (1 - abar))`` is interpolated linearly between integer indices, and
    ``alpha = sqrt(sigmoid(log_snr))``, ``sigma = sqrt(sigmoid(-log_snr))``, so at integer indices
    alpha^2 equals alphas_cumprod (to float64 rounding). Index 0 still has sigma > 0.

    Build with raw values (``VPDiscrete(scheduler.alphas_cumprod)``) or a beta schedule
    (``VPDiscrete.from_betas("scaled_linear")``, see :func:`make_betas`).
    """

    name: ClassVar[str] = "vp_discrete"
    t_min = 0.0
    t_max = 1.0

    def __init__(
        self,
        alphas_cumprod: Tensor | Sequence[float] | None = None,
        *,
        schedule: str | None = None,
        T: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if alphas_cumprod is not None and schedule is not None:
            raise DistillError("vp_discrete: give either alphas_cumprod or a beta schedule, not both")
        self._spec: dict[str, Any] | None = None
        if alphas_cumprod is None:
            self._spec = {"schedule": schedule or "linear", "T": int(T), "beta_start": beta_start, "beta_end": beta_end}
            alphas_cumprod = torch.cumprod(1.0 - make_betas(**self._spec), dim=0)  # float32, as diffusers does
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all() and (ac[1:] < ac[:-1]).all()):
            raise DistillError(
                "vp_discrete: alphas_cumprod must hold at least 2 values in (0, 1), strictly decreasing; "
                "pass the scheduler's alphas_cumprod (cumprod(1 - betas))"
            )
        self.alphas_cumprod = ac
        self.T = ac.numel()
        self._table = torch.log(ac) - torch.log1p(-ac)
        self.__post_init__()

    @classmethod
    def from_betas(
        cls, schedule: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> VPDiscrete:
        """alphas_cumprod = cumprod(1 - betas) for a diffusers ``DDPMScheduler`` beta schedule."""
        return cls(schedule=schedule, T=T, beta_start=beta_start, beta_end=beta_end)

    def index(self, t: TimeLike) -> Tensor:
        """Fractional training index t (T - 1)."""
        return _time(t) * (self.T - 1)

    def t_of_index(self, i: TimeLike) -> Tensor:
        """t = i / (T - 1); returns float64 for integer input."""
        i = torch.as_tensor(i)
        return (i if i.is_floating_point() else i.to(torch.float64)) / (self.T - 1)

    def _interp(self, t: TimeLike) -> tuple[Tensor, Tensor, torch.dtype]:
        """(log_snr, d log_snr / dt) in float64; the slope is the right segment's at knots."""
        t = _time(t)
        x = t.to(torch.float64) * (self.T - 1)
        table = self._table.to(x.device)
        i = x.detach().floor().clamp(0, self.T - 2).long()
        lo, hi = table[i], table[i + 1]
        return lo + (x - i) * (hi - lo), (hi - lo) * (self.T - 1), t.dtype

    def alpha(self, t: TimeLike) -> Tensor:
        lam, _, dtype = self._interp(t)
        return torch.sigmoid(lam).sqrt().to(dtype)

    def sigma(self, t: TimeLike) -> Tensor:
        lam, _, dtype = self._interp(t)
        return torch.sigmoid(-lam).sqrt().to(dtype)

    def log_snr(self, t: TimeLike) -> Tensor:
        lam, _, dtype = self._interp(t)
        return lam.to(dtype)

    def d_alpha(self, t: TimeLike) -> Tensor:
        """alpha' = alpha sigma^2 lambda' / 2 (from alpha^2 = sigmoid(lambda))."""
        lam, slope, dtype = self._interp(t)
        return (0.5 * torch.sigmoid(lam).sqrt() * torch.sigmoid(-lam) * slope).to(dtype)

    def d_sigma(self, t: TimeLike) -> Tensor:
        """sigma' = -sigma alpha^2 lambda' / 2 (from sigma^2 = sigmoid(-lambda))."""
        lam, slope, dtype = self._interp(t)
        return (-0.5 * torch.sigmoid(-lam).sqrt() * torch.sigmoid(lam) * slope).to(dtype)

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        """Invert the piecewise-linear log-SNR (clamped to [0, 1] outside the table's range)."""
        snr = _time(snr)
        target = torch.log(snr.to(torch.float64))
        table = self._table.to(target.device)
        hi = torch.searchsorted(-table, -target.contiguous()).clamp(1, self.T - 1)
        lo = hi - 1
        idx = lo + (target - table[lo]) / (table[hi] - table[lo])
        return (idx.clamp(0, self.T - 1) / (self.T - 1)).to(snr.dtype)

    def describe(self) -> dict[str, Any]:
        """The beta-schedule arguments, or the raw alphas_cumprod as a list of floats."""
        if self._spec is not None:
            return {"name": self.name, **self._spec}
        return {"name": self.name, "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        spec = self._spec or {"T": self.T}
        return f"VPDiscrete({', '.join(f'{k}={v!r}' for k, v in spec.items())})"


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def make_betas(schedule: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The beta schedules of diffusers' ``DDPMScheduler`` (float32, as there):

    linear:            linspace(beta_start, beta_end, T)                                  (Ho et al. 2020)
    scaled_linear:     linspace(sqrt(beta_start), sqrt(beta_end), T)^2                     (Stable Diffusion)
    squaredcos_cap_v2: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999),
                       abar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2   (Nichol & Dhariwal 2021, eq. 17)
    """
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        u = torch.arange(T + 1, dtype=torch.float64) / T
        abar = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999).to(torch.float32)
    raise unknown_name("beta schedule", schedule, BETA_SCHEDULES)


@dataclass(frozen=True, eq=False)
class EDM(GaussianProcess):
    """EDM / variance-exploding process: alpha = 1, sigma = t (Karras et al. 2022, Table 1).

    flow = d x_t / dt = eps: the probability-flow ODE (eq. 1 with sigma(t) = t and the score of eq. 3)
    is dx/dsigma = (x - D(x; sigma)) / sigma.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: ClassVar[str] = "edm"

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return _time(t).clone()

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_time(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_time(t))

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        return torch.rsqrt(_time(snr))


@dataclass(frozen=True, eq=False)
class Flow(GaussianProcess):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t (Liu et al. 2022; Lipman et al. 2022).

    flow = eps - x0 is the straight-line velocity; x0 = x_t - t flow. ``t_max = 1`` is pure noise;
    ``t_min = 1e-3`` keeps sigma > 0 so eps and score stay defined.
    """

    t_min: float = 1e-3
    t_max: float = 1.0
    name: ClassVar[str] = "flow"

    def alpha(self, t: TimeLike) -> Tensor:
        return 1 - _time(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return _time(t).clone()

    def d_alpha(self, t: TimeLike) -> Tensor:
        return -torch.ones_like(_time(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_time(t))

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        """(1 - t) / t = snr^(1/2)."""
        return 1 / (1 + _time(snr).sqrt())


@dataclass(frozen=True, eq=False)
class Trig(GaussianProcess):
    """TrigFlow: alpha = cos t, sigma = sin t, t in [t_min, pi/2] (Lu & Song 2024, sCM, TrigFlow formulation).

    flow = -sin(t) x0 + cos(t) eps = v. TrigFlow's data scale sigma_d is taken as 1 (normalise the
    data so its std is ~1). ``t_min = 1e-3`` matches ``flow``; t_max = pi/2 is pure noise.
    """

    t_min: float = 1e-3
    t_max: float = math.pi / 2
    name: ClassVar[str] = "trig"

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.cos(_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.sin(_time(t))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return -self.sigma(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return self.alpha(t)

    def t_at_snr(self, snr: TimeLike) -> Tensor:
        """tan t = snr^(-1/2)."""
        snr = _time(snr)
        return torch.atan2(torch.ones_like(snr), snr.sqrt())


GAUSSIAN_PROCESSES: dict[str, type[GaussianProcess]] = {
    c.name: c for c in (VPCosine, VPLinear, VPDiscrete, EDM, Flow, Trig)
}


def make_process(name: str, **kwargs: Any) -> Any:
    """Build a process by name: the Gaussian families above, or the discrete ``masked`` / ``uniform``.

    Unknown names or arguments raise DistillError with a close-match suggestion.
    ``make_process(**p.describe())`` rebuilds ``p``.
    """
    from distill.process.discrete import DISCRETE_PROCESSES

    return build("process", {**GAUSSIAN_PROCESSES, **DISCRETE_PROCESSES}, name, kwargs)
