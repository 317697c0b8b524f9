"""Isotropic Gaussian mixture data with the exact denoiser E[x0 | x_t] under any Gaussian process.

For x0 ~ sum_k w_k N(mu_k, s_k^2 I) in R^D and x_t = alpha x0 + sigma eps:

    p_t(x_t)   = sum_k w_k N(x_t; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)
    r_k(x_t)   = w_k N(x_t; alpha mu_k, v_k I) / p_t(x_t),       v_k = alpha^2 s_k^2 + sigma^2
    E[x0|x_t]  = sum_k r_k (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k))

(Gaussian conditioning within each component, Bishop 2006, sec. 2.3.3, mixed by the
responsibilities; equivalently Tweedie's formula E[x0|x_t] = (x_t + sigma^2 grad log p_t) / alpha,
Efron 2011). Computed in float64 and in log space, so far-away x_t stay finite. This is the exact
teacher of the toy modality: every other prediction follows from ``GaussianProcess.convert``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill.errors import DistillError

_F64 = torch.float64


@dataclass(frozen=True)
class MixtureSample:
    """Samples ``x`` [n, D] and the component ``component`` [n] each was drawn from."""

    x: Tensor
    component: Tensor


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """``sum_k weights_k N(means_k, stds_k^2 I)``; means [K, D], stds [K], weights [K] (normalised here)."""

    means: Tensor
    stds: Tensor
    weights: Tensor | None = None

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        k = means.shape[0]
        stds = torch.as_tensor(self.stds, dtype=means.dtype, device=means.device).expand(k).clone()
        weights = torch.ones(k) if self.weights is None else torch.as_tensor(self.weights)
        weights = weights.to(means.dtype).to(means.device)
        if means.ndim != 2 or weights.shape != (k,) or not bool((stds >= 0).all() and (weights >= 0).all()):
            raise DistillError(
                f"GaussianMixture needs means [K, D], stds [K] >= 0 and weights [K] >= 0; got shapes "
                f"{tuple(means.shape)}, {tuple(stds.shape)}, {tuple(weights.shape)}"
            )
        if not weights.sum() > 0:
            raise DistillError("GaussianMixture weights sum to 0; give at least one positive weight")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights / weights.sum())

    @property
    def k(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, *args: Any, **kwargs: Any) -> GaussianMixture:
        """Move/cast like ``Tensor.to``."""
        return GaussianMixture(self.means.to(*args, **kwargs), self.stds.to(*args, **kwargs), self.weights.to(*args, **kwargs))

    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.5, weights: Tensor | None = None) -> GaussianMixture:
        """k components evenly spaced on a circle of ``radius`` in 2-D."""
        angle = torch.arange(k, dtype=_F64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return cls(means.float(), torch.full((k,), float(std)), weights)

    @classmethod
    def grid(cls, n: int = 3, spacing: float = 4.0, std: float = 0.5, weights: Tensor | None = None) -> GaussianMixture:
        """n x n components on a square grid centred at the origin in 2-D."""
        axis = (torch.arange(n, dtype=_F64) - (n - 1) / 2) * spacing
        means = torch.cartesian_prod(axis, axis).reshape(n * n, 2)
        return cls(means.float(), torch.full((n * n,), float(std)), weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> MixtureSample:
        """Draw n samples: component ~ Categorical(weights), x = mu_c + s_c eps."""
        device = self.means.device
        comp = torch.multinomial(self.weights.to(_F64), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, device=device, dtype=self.means.dtype)
        return MixtureSample(self.means[comp] + self.stds[comp, None] * eps, comp)

    def _log_joint(self, x: Tensor, alpha: Any, sigma: Any) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k + log N(x; alpha mu_k, v_k I) [n, K], plus alpha [n, 1] and v [n, K], in float64."""
        x = x.to(_F64)
        a = torch.as_tensor(alpha, dtype=_F64, device=x.device).reshape(-1, 1)
        s = torch.as_tensor(sigma, dtype=_F64, device=x.device).reshape(-1, 1)
        mu, sd, w = (v.to(device=x.device, dtype=_F64) for v in (self.means, self.stds, self.weights))
        var = a**2 * sd**2 + s**2  # [n, K]
        sq = ((x[:, None, :] - a[:, :, None] * mu) ** 2).sum(-1)  # [n, K]
        log_n = -0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.log(w) + log_n, a, var

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x0) [n] (float64)."""
        return self.marginal_log_prob(x, 1.0, 0.0)

    def marginal_log_prob(self, x_t: Tensor, alpha: Any, sigma: Any) -> Tensor:
        """log p_t(x_t) [n] (float64) for x_t = alpha x0 + sigma eps; alpha, sigma scalars, [n] or [n, 1]."""
        return torch.logsumexp(self._log_joint(x_t, alpha, sigma)[0], dim=-1)

    def responsibilities(self, x_t: Tensor, alpha: Any, sigma: Any) -> Tensor:
        """r_k(x_t) = p(component k | x_t) [n, K] (float64, softmax in log space)."""
        return torch.softmax(self._log_joint(x_t, alpha, sigma)[0], dim=-1)

    def posterior_mean(self, x_t: Tensor, alpha: Any, sigma: Any) -> Tensor:
        """E[x0 | x_t] [n, D], computed in float64, returned in x_t's dtype."""
        log_joint, a, var = self._log_joint(x_t, alpha, sigma)
        r = torch.softmax(log_joint, dim=-1)
        x = x_t.to(_F64)
        mu = self.means.to(device=x.device, dtype=_F64)
        gain = a * self.stds.to(device=x.device, dtype=_F64) ** 2 / var  # [n, K]
        comp = mu + gain[..., None] * (x[:, None, :] - a[:, :, None] * mu)  # [n, K, D]
        return (r[..., None] * comp).sum(1).to(x_t.dtype)
