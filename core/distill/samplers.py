"""Samplers: teacher ODE solvers and student few-step samplers, one signature.

Every sampler is a function

    sampler(denoiser, x_T, cond=None, *, timesteps, generator=None,
            guidance=None, null_cond=None, **options) -> SampleResult

* ``timesteps`` is a float64 tensor ``[steps + 1]`` from
  :func:`distill.process.sampling_schedule`: ``t_0 = t_max`` first, ``t_N = t_min``
  last, strictly decreasing (``N = steps``).
* ``guidance`` (``None`` = off) is the classifier-free guidance scale ``w`` in the
  Denoiser's convention ``x_u + w (x_c - x_u)`` with ``null_cond`` as the
  unconditional input; ``w = 1`` is the conditional model.
* ``generator`` drives every random draw (stochastic samplers), so a fixed
  generator gives a fixed sample.

**The last interval is the final denoising.** ``t_N = t_min`` stands for the data
end of the process: no sampler evaluates the network at ``t_min``. The last step
``t_{N-1} -> t_N`` returns the x0 prediction ``D(x_{t_{N-1}}, t_{N-1})`` (the
denoised sample), which is what EDM's Algorithm 1 does on its final Euler step to
``sigma = 0`` (Karras et al. 2022; for ``alpha = 1`` processes Euler to 0 *is* the
x0 prediction), what DDIM does on its step to ``t = 0``, and what a multistep
student returns. It is a first-order step with local error ``O(h^2)``, so taken once
it keeps Heun and DPM-Solver++(2M) globally second order. Hence every sampler uses
exactly ``steps`` network calls except Heun (``2 * steps - 1``).

The bare samplers run with whatever grad mode is active, so a method can
backpropagate through a student's multistep sampler; :func:`sample` wraps them in
``torch.no_grad()``.

Each time is given to the network as a ``[B]`` tensor of ``x_T``'s dtype; the
update coefficients (``alpha``, ``sigma``, step sizes) are computed from the float64
schedule.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError

__all__ = [
    "SampleResult",
    "Sampler",
    "euler",
    "heun",
    "ddim",
    "dpmpp_2m",
    "onestep",
    "multistep",
    "consistency",
    "ancestral",
    "SAMPLERS",
    "DISCRETE_SAMPLERS",
    "TEACHER_SAMPLERS",
    "STUDENT_SAMPLERS",
    "get_sampler",
    "sample",
]


@dataclass
class SampleResult:
    """What every sampler returns.

    ``x0``: the generated samples (the final x0 prediction), shape of ``x_T``;
    ``nfe``: network function evaluations per sample (a guided call counts once,
    although it runs the network on the conditional and the null input);
    ``trajectory``: with ``return_trajectory=True``, the states ``x_{t_0}, ...,
    x_{t_{N-1}}`` at which the network was called, then ``x0``; otherwise None.
    """

    x0: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] | None = None


class Sampler(Protocol):
    def __call__(
        self,
        denoiser: Denoiser,
        x_T: torch.Tensor,
        cond: Any = None,
        *,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
        null_cond: Any = None,
        **options: Any,
    ) -> SampleResult: ...


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


class _Run:
    """Bookkeeping shared by all samplers: times, coefficients, calls, trajectory."""

    def __init__(
        self,
        name: str,
        denoiser: Denoiser,
        x_T: torch.Tensor,
        cond: Any,
        timesteps: torch.Tensor,
        guidance: float | None,
        null_cond: Any,
        options: dict[str, Any],
        allowed: tuple[str, ...] = (),
    ) -> None:
        allowed = allowed + ("return_trajectory",)
        unknown = [k for k in options if k not in allowed]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, allowed, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise DistillError(
                f"sampler {name!r} got unknown option(s) {', '.join(hints)}; "
                f"its options are: {', '.join(allowed)}"
            )
        if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
            raise DistillError(f"sampler {name!r} needs x_T as a floating-point tensor [B, ...]; got {type(x_T).__name__}")
        ts = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu()
        if ts.ndim != 1 or ts.numel() < 2:
            raise DistillError(
                f"sampler {name!r}: timesteps must be a 1-D tensor [steps + 1] with at least 2 entries "
                f"(t_max first, t_min last); got shape {tuple(ts.shape)}. Build it with "
                "distill.process.sampling_schedule(process, steps)."
            )
        if not bool((ts[1:] < ts[:-1]).all()):
            raise DistillError(f"sampler {name!r}: timesteps must be strictly decreasing (t_max first); got {ts.tolist()}")
        self.name = name
        self.denoiser = denoiser
        self.process = denoiser.process
        self.x_T = x_T
        self.cond = cond
        self.guidance = guidance
        self.null_cond = null_cond
        self.ts = ts
        self.steps = ts.numel() - 1
        self.alpha = self.process.alpha(ts).to(torch.float64)
        self.sigma = self.process.sigma(ts).to(torch.float64)
        self.nfe = 0
        self.keep = bool(options.get("return_trajectory", False))
        self.trajectory: list[torch.Tensor] | None = [] if self.keep else None

    def t(self, i: int) -> torch.Tensor:
        """Time ``t_i`` as a ``[B]`` tensor of x's dtype and device."""
        x = self.x_T
        return self.ts[i].to(device=x.device, dtype=x.dtype).expand(x.shape[0])

    def a(self, i: int) -> float:
        return float(self.alpha[i])

    def s(self, i: int) -> float:
        return float(self.sigma[i])

    def call(self, x: torch.Tensor, i: int, target: str = "x0", record: bool = True) -> torch.Tensor:
        """One network evaluation at ``(x, t_i)`` (guided when guidance is set)."""
        self.nfe += 1
        if record and self.trajectory is not None:
            self.trajectory.append(x)
        t = self.t(i)
        if self.guidance is None:
            return self.denoiser.predict(x, t, self.cond, target=target)
        return self.denoiser.guided(x, t, self.cond, self.null_cond, float(self.guidance), target=target)

    def done(self, x0: torch.Tensor) -> SampleResult:
        if self.trajectory is not None:
            self.trajectory.append(x0)
        return SampleResult(x0=x0, nfe=self.nfe, trajectory=self.trajectory)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator may drive a GPU sampler), then move.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# ---------------------------------------------------------------------------
# teacher solvers (probability-flow ODE)
# ---------------------------------------------------------------------------


def euler(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """Euler's method on the probability-flow ODE in the process's own time.

    Song et al. 2021 (score SDE), eq. 13: ``dx/dt = u(x, t)``, where the velocity
    ``u = alpha'(t) x0 + sigma'(t) eps`` is the Denoiser's ``"flow"`` prediction.
    Update for ``i = 0 .. N-2``: ``x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i)``;
    then the final denoising ``x0 = D(x_{N-1}, t_{N-1})``. First order; NFE = N.
    """
    run = _Run("euler", denoiser, x_T, cond, timesteps, guidance, null_cond, options)
    x = x_T
    for i in range(run.steps - 1):
        u = run.call(x, i, target="flow")
        x = x + (float(run.ts[i + 1]) - float(run.ts[i])) * u
    return run.done(run.call(x, run.steps - 1))


def heun(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1).

    Deterministic EDM sampler in the process's own time, velocity ``u`` = the
    ``"flow"`` prediction. For ``i = 0 .. N-2``:
    ``d_i = u(x_i, t_i)``, ``x' = x_i + h d_i`` (``h = t_{i+1} - t_i``),
    ``x_{i+1} = x_i + h (d_i + u(x', t_{i+1})) / 2``; the last step is first order,
    the final denoising ``x0 = D(x_{N-1}, t_{N-1})`` (EDM's Euler step to sigma = 0).
    Global error O(h^2); NFE = 2N - 1.
    """
    run = _Run("heun", denoiser, x_T, cond, timesteps, guidance, null_cond, options)
    x = x_T
    for i in range(run.steps - 1):
        h = float(run.ts[i + 1]) - float(run.ts[i])
        d = run.call(x, i, target="flow")
        x_pred = x + h * d
        d_next = run.call(x_pred, i + 1, target="flow", record=False)
        x = x + h * 0.5 * (d + d_next)
    return run.done(run.call(x, run.steps - 1))


def ddim_noise_scale(alpha_t: float, sigma_t: float, alpha_s: float, sigma_s: float, eta: float) -> float:
    """Std ``c`` of the fresh noise in a generalised DDIM step from ``t`` to ``s < t``.

    Song, Meng & Ermon 2021 (DDIM), eq. 16: ``sigma_t(eta) = eta * sqrt((1 - a_{t-1}) /
    (1 - a_t)) * sqrt(1 - a_t / a_{t-1})`` with ``a = alpha^2``, ``1 - a = sigma^2``.
    For any Gaussian process ``x_t = alpha_t x0 + sigma_t eps``: the transition is
    ``x_t | x_s ~ N((alpha_t/alpha_s) x_s, sigma_{t|s}^2)`` with
    ``sigma_{t|s}^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2``, and the forward
    posterior ``q(x_s | x_t, x0)`` has variance ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2
    = sigma_s^2 (1 - (alpha_t sigma_s / (alpha_s sigma_t))^2)``. Its square root times
    ``eta`` is ``c``; ``eta = 1`` is ancestral (DDPM) sampling, ``eta = 0`` the ODE.
    """
    ratio = (alpha_t * sigma_s) / (alpha_s * sigma_t)
    return eta * sigma_s * math.sqrt(max(0.0, 1.0 - ratio * ratio))


def ddim(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    eta: float = 0.0,
    clip_x0: float | None = None,
    **options: Any,
) -> SampleResult:
    """Generalised DDIM (Song, Meng & Ermon 2021, eq. 12 and 16) for any alpha, sigma.

    With ``x0 = D(x_t, t)`` and ``eps = (x_t - alpha_t x0) / sigma_t``:
    ``x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z``, ``z ~ N(0, I)``,
    ``c = eta sigma_s sqrt(1 - (alpha_t sigma_s / (alpha_s sigma_t))^2)``
    (see :func:`ddim_noise_scale`). ``eta = 0``: deterministic, the exact solution
    of the PF-ODE when x0 is constant over the step (first order in general);
    ``eta = 1``: ancestral sampling, which keeps the marginals. The last step is the
    final denoising. NFE = N.

    ``clip_x0 = c`` clips every x0 prediction to ``[-c, c]`` before the step, with eps recomputed
    from the clipped x0 (the ``clip_sample`` of diffusers' DDPM/DDIM schedulers, on by default in
    diffusion policies, whose actions are normalised to [-1, 1]): near ``t_max`` an eps-prediction's
    x0 ``(x - sigma eps) / alpha`` magnifies the network's error by ``1 / alpha`` (2,000 at the
    end of a 100-step squared-cosine DDPM). None (default) leaves x0 as predicted.
    """
    run = _Run("ddim", denoiser, x_T, cond, timesteps, guidance, null_cond, options, allowed=("eta", "clip_x0"))
    if not 0.0 <= float(eta) <= 1.0:
        raise DistillError(f"ddim: eta must be in [0, 1] (0 = deterministic, 1 = ancestral); got {eta}")
    if clip_x0 is not None and not float(clip_x0) > 0:
        raise DistillError(f"ddim: clip_x0 must be a positive bound (x0 is clipped to [-clip_x0, clip_x0]) or None; got {clip_x0}")

    def clip(x0: torch.Tensor) -> torch.Tensor:
        return x0 if clip_x0 is None else x0.clamp(-float(clip_x0), float(clip_x0))

    x = x_T
    for i in range(run.steps - 1):
        x0 = clip(run.call(x, i))
        a_t, s_t, a_s, s_s = run.a(i), run.s(i), run.a(i + 1), run.s(i + 1)
        eps = (x - a_t * x0) / s_t
        c = ddim_noise_scale(a_t, s_t, a_s, s_s, float(eta))
        x = a_s * x0 + math.sqrt(max(0.0, s_s * s_s - c * c)) * eps
        if c > 0:
            x = x + c * _randn(x, generator)
    return run.done(clip(run.call(x, run.steps - 1)))


def dpmpp_2m(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data-prediction form.

    In ``lambda = log(alpha / sigma)``, with ``h_i = lambda_{i+1} - lambda_i``:
    ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) D_i``,
    ``D_0 = x0_0`` (first step first order, i.e. DDIM), and for ``i >= 1``
    ``D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}``, ``r_i = h_{i-1} / h_i``,
    where ``x0_i = D(x_i, t_i)``. The last step is the final denoising. NFE = N.
    """
    run = _Run("dpmpp_2m", denoiser, x_T, cond, timesteps, guidance, null_cond, options)
    lam = torch.log(run.alpha) - torch.log(run.sigma)
    x = x_T
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in range(run.steps - 1):
        x0 = run.call(x, i)
        h = float(lam[i + 1] - lam[i])
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (run.s(i + 1) / run.s(i)) * x - run.a(i + 1) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return run.done(run.call(x, run.steps - 1))


# ---------------------------------------------------------------------------
# student samplers
# ---------------------------------------------------------------------------


def onestep(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """One-step generation ``x0 = D(x_T, t_0)`` (``t_0 = timesteps[0]``, normally t_max).

    The sampler of one-step students (DMD/DMD2, consistency models at one step,
    progressive distillation to one step). Only ``timesteps[0]`` is used. NFE = 1.
    """
    run = _Run("onestep", denoiser, x_T, cond, timesteps, guidance, null_cond, options)
    return run.done(run.call(x_T, 0))


def multistep(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """Few-step student sampling: predict x0, re-noise with fresh noise, repeat.

    Song et al. 2023 (consistency models), Algorithm 1; DMD2 (Yin et al. 2024) backward
    simulation. For ``i = 0 .. N-1``: ``x0_i = D(x_i, t_i)``; if ``i < N-1``:
    ``x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} z``, ``z ~ N(0, I)`` from ``generator``.
    Returns ``x0_{N-1}``. NFE = N. Differentiable in the network's parameters (the
    noise is not), so a method can backpropagate through the whole chain.
    """
    run = _Run("multistep", denoiser, x_T, cond, timesteps, guidance, null_cond, options)
    x = x_T
    for i in range(run.steps - 1):
        x0 = run.call(x, i)
        x = run.a(i + 1) * x0 + run.s(i + 1) * _randn(x0, generator)
    return run.done(run.call(x, run.steps - 1))


def consistency(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    gamma: float = 1.0,
    **options: Any,
) -> SampleResult:
    """Consistency-model chaining with TCD's strategic stochastic sampling.

    Song et al. 2023, Algorithm 1 (``gamma = 1``, the default: fresh noise at each
    step, identical to :func:`multistep`) generalised as in Zheng et al. 2024
    (Trajectory Consistency Distillation, Sec. 4.3), whose ``gamma`` sets how much
    fresh noise enters: for ``i < N-1``, ``x0_i = D(x_i, t_i)``,
    ``eps_i = (x_i - alpha_i x0_i) / sigma_i``; go deterministically (DDIM) to
    ``s' = (1 - gamma) t_{i+1}``, then forward-diffuse from ``s'`` to ``t_{i+1}``. In
    closed form, ``x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} (k eps_i + sqrt(1 - k^2) z)``
    with ``k = (alpha_{i+1} sigma(s')) / (alpha(s') sigma_{i+1})`` (``k = 0`` at
    ``gamma = 1``: fresh noise; ``k = 1`` at ``gamma = 0``: deterministic DDIM).
    Note the direction: as in the TCD paper, ``gamma = 0`` is deterministic and
    ``gamma = 1`` is multistep consistency sampling. NFE = N.
    """
    run = _Run("consistency", denoiser, x_T, cond, timesteps, guidance, null_cond, options, allowed=("gamma",))
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise DistillError(
            f"consistency: gamma must be in [0, 1] (1 = fresh noise each step as in CM, 0 = deterministic DDIM); got {gamma}"
        )
    x = x_T
    process = run.process
    for i in range(run.steps - 1):
        x0 = run.call(x, i)
        a_n, s_n = run.a(i + 1), run.s(i + 1)
        k = 0.0
        if gamma < 1.0:
            t_mid = torch.tensor((1.0 - gamma) * float(run.ts[i + 1]), dtype=torch.float64)
            a_m, s_m = float(process.alpha(t_mid)), float(process.sigma(t_mid))
            k = min(1.0, max(0.0, (a_n * s_m) / (a_m * s_n)))
        if k > 0.0:
            eps = (x - run.a(i) * x0) / run.s(i)
            noise = k * eps
            if k < 1.0:
                noise = noise + math.sqrt(1.0 - k * k) * _randn(x0, generator)
        else:
            noise = _randn(x0, generator)
        x = a_n * x0 + s_n * noise
    return run.done(run.call(x, run.steps - 1))


# ---------------------------------------------------------------------------
# discrete (token) samplers
# ---------------------------------------------------------------------------


def check_token_start(name: str, denoiser: Denoiser, x_T: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Validate a token sampler's inputs; returns the float64 schedule on the CPU."""
    from distill.process import DiscreteProcess

    if not isinstance(denoiser.process, DiscreteProcess):
        raise DistillError(
            f"sampler {name!r} samples token models (a masked or uniform process); this Denoiser's process is "
            f"{denoiser.process.name!r}: use euler, heun, ddim or dpmpp_2m"
        )
    if not isinstance(x_T, torch.Tensor) or x_T.is_floating_point() or x_T.ndim < 2:
        raise DistillError(
            f"sampler {name!r} needs x_T as integer tokens [B, L]; build it with denoiser.process.prior(...) "
            "or process.prior_from_noise(noise)"
        )
    ts = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise DistillError(
            f"sampler {name!r}: timesteps must be a strictly decreasing 1-D tensor [steps + 1] (t_max first); "
            f"got {ts.tolist()}"
        )
    return ts


def ancestral(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    timesteps: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """Ancestral sampling of a discrete diffusion model (D3PM, Austin et al. 2021, eq. 4; MDLM,
    Sahoo et al. 2024, Alg. 2): for ``i = 0 .. N-1``, ``p0 = D(x_i, t_i)`` (the Denoiser's x0,
    a distribution over tokens) and ``x_{i+1} ~ sum_x0 q(x_{t_{i+1}} | x_i, x0) p0(x0)``
    (``process.step``). The last step goes to ``t_N = 0``, where the posterior is ``p0`` itself
    on every still-corrupted token: the final denoising draws tokens instead of taking a mean.
    Positions are drawn independently given ``x_i`` (the factorisation few-step students fight).
    NFE = N; ``generator`` drives every draw. Not differentiable (it samples).
    """
    unknown = [k for k in options if k != "return_trajectory"]
    if unknown:
        raise DistillError(f"sampler 'ancestral' got unknown option(s) {unknown}; its only option is return_trajectory")
    ts = check_token_start("ancestral", denoiser, x_T, timesteps)
    trajectory: list[torch.Tensor] | None = [] if options.get("return_trajectory") else None
    x = x_T
    process = denoiser.process
    for i in range(ts.numel() - 1):
        if trajectory is not None:
            trajectory.append(x)
        t = ts[i].to(device=x.device, dtype=torch.float32).expand(x.shape[0])
        if guidance is None:
            p0 = denoiser.predict(x, t, cond, target="x0")
        else:
            p0 = denoiser.guided(x, t, cond, null_cond, float(guidance), target="x0")
        x = process.step(x, p0, ts[i], ts[i + 1], generator=_token_generator(generator, x))
    if trajectory is not None:
        trajectory.append(x)
    return SampleResult(x0=x, nfe=ts.numel() - 1, trajectory=trajectory)


def _token_generator(generator: torch.Generator | None, x: torch.Tensor) -> torch.Generator | None:
    # process.step draws on x's device; a CPU generator cannot drive a CUDA draw.
    return generator if generator is None or generator.device == x.device else None


# ---------------------------------------------------------------------------
# registry and convenience
# ---------------------------------------------------------------------------

TEACHER_SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "euler": euler,
    "heun": heun,
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
}
STUDENT_SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "onestep": onestep,
    "multistep": multistep,
    "consistency": consistency,
}
SAMPLERS: dict[str, Callable[..., SampleResult]] = {**TEACHER_SAMPLERS, **STUDENT_SAMPLERS}
# Samplers of token models (discrete processes); get_sampler finds them too.
DISCRETE_SAMPLERS: dict[str, Callable[..., SampleResult]] = {"ancestral": ancestral}


def get_sampler(name: str | Callable[..., SampleResult]) -> Callable[..., SampleResult]:
    """The sampler registered as ``name`` (a callable is returned unchanged)."""
    if callable(name):
        return name
    known = {**SAMPLERS, **DISCRETE_SAMPLERS}
    try:
        return known[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DistillError(f"unknown sampler {name!r}; known samplers: {', '.join(known)}.{hint}") from None


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    cond: Any = None,
    *,
    sampler: str | Callable[..., SampleResult] = "heun",
    steps: int = 18,
    schedule: str = "uniform",
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    guidance: float | None = None,
    null_cond: Any = None,
    **options: Any,
) -> SampleResult:
    """Sample with a named sampler on ``sampling_schedule(process, steps, kind=schedule)``.

    ``x_T`` is the starting point at ``t_max`` (e.g. ``denoiser.process.prior(shape)``).
    Runs under ``torch.no_grad()``; call a sampler directly to keep gradients.
    """
    from distill.process import sampling_schedule

    if not isinstance(x_T, torch.Tensor):
        raise DistillError(
            "sample() needs x_T, a tensor of starting points at t_max; build one with "
            "denoiser.process.prior((n, *sample_shape), generator=...)"
        )
    if int(steps) < 1:
        raise DistillError(f"steps must be >= 1; got {steps}")
    fn = get_sampler(sampler)
    kwargs: dict[str, Any] = {"kind": schedule}
    if schedule == "karras":
        kwargs["rho"] = rho
    timesteps = sampling_schedule(denoiser.process, int(steps), **kwargs)
    with torch.no_grad():
        return fn(
            denoiser,
            x_T,
            cond,
            timesteps=timesteps,
            generator=generator,
            guidance=guidance,
            null_cond=null_cond,
            **options,
        )
