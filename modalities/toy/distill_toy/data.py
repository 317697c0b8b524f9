"""2-D toy datasets, generated in code from a ``torch.Generator``.

Every dataset is a distribution on R^2 whose samples have a spread of order one
per axis, matching the unit-variance Gaussian prior of the processes (``flow``:
``x_1 ~ N(0, I)``). Same generator state, same samples.

========================  =====================================================================
name                      distribution (before ``scale``)
========================  =====================================================================
``ring8``                 8 equal-weight isotropic Gaussians, means on a circle of radius 2.0
                          (first mode at angle 0), std 0.1 (neighbouring modes 15.3 std apart)
``ring8_unequal``         the ``ring8`` modes with weights
                          0.40, 0.20, 0.10, 0.10, 0.08, 0.06, 0.04, 0.02 (counter-clockwise
                          from angle 0): for mode-coverage experiments (reverse-KL methods
                          tend to drop the light modes)
``grid25``                25 equal-weight Gaussians on the grid {-2, -1, 0, 1, 2}^2, std 0.05
``checkerboard``          uniform on the 8 black squares of a 4x4 board of unit squares on
                          [-2, 2]^2 (squares with ``floor(x) + floor(y)`` even)
``moons``                 two interleaving half circles (unit radius, Gaussian noise std 0.05),
                          centred and scaled by 1.5 (x in about [-2.25, 2.25])
========================  =====================================================================

The three mixtures are :class:`distill.process.mixture.GaussianMixture` objects,
so their exact denoiser ``E[x0 | x_t]`` exists (:mod:`distill_toy.teacher`);
checkerboard and moons only have samples. ``scale`` multiplies every length
(means, standard deviations, board and moon sizes).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from distill.errors import DistillError
from distill.process.mixture import GaussianMixture

RING_RADIUS = 2.0
RING_STD = 0.1
RING_UNEQUAL_WEIGHTS = (0.40, 0.20, 0.10, 0.10, 0.08, 0.06, 0.04, 0.02)
GRID_SPACING = 1.0
GRID_STD = 0.05
MOONS_NOISE = 0.05
MOONS_SCALE = 1.5


@dataclass(frozen=True)
class ToyDataset:
    """One toy distribution: its samples, and for mixtures the exact mixture.

    ``sample(n, generator)`` returns ``[n, 2]`` float32 on the generator's device
    (CPU when ``generator`` is None). ``extent`` is the half-width of a square
    box that holds practically all of the mass (used for fixed plot limits).
    """

    name: str
    description: str
    params: dict[str, Any]
    extent: float
    mixture: GaussianMixture | None = None
    sampler: Callable[[int, torch.Generator | None], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def has_exact_teacher(self) -> bool:
        return self.mixture is not None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        n = int(n)
        if n < 0:
            raise DistillError(f"number of samples must be >= 0, got {n}")
        if n == 0:
            return torch.zeros(0, 2, dtype=torch.float32, device=_device(generator))
        if self.mixture is not None:
            x = self.mixture.sample(n, generator=generator).x
        else:
            assert self.sampler is not None
            x = self.sampler(n, generator)
        return x.to(torch.float32)


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _mixture(means: torch.Tensor, std: float, weights: torch.Tensor) -> GaussianMixture:
    k = means.shape[0]
    return GaussianMixture(
        means=means.to(torch.float64),
        stds=torch.full((k,), float(std), dtype=torch.float64),
        weights=(weights / weights.sum()).to(torch.float64),
    )


def ring_means(k: int = 8, radius: float = RING_RADIUS) -> torch.Tensor:
    """``k`` points on a circle of ``radius``, counter-clockwise from angle 0: ``[k, 2]``."""
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)


def grid_means(side: int = 5, spacing: float = GRID_SPACING) -> torch.Tensor:
    """``side x side`` grid centred at the origin with ``spacing``: ``[side^2, 2]``."""
    axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def ring8(scale: float = 1.0) -> ToyDataset:
    radius, std = RING_RADIUS * scale, RING_STD * scale
    return ToyDataset(
        name="ring8",
        description=f"8 equal Gaussians on a circle of radius {radius:g}, std {std:g}",
        params={"modes": 8, "radius": radius, "std": std, "weights": [1 / 8] * 8},
        extent=radius + 5 * std,
        mixture=_mixture(ring_means(8, radius), std, torch.ones(8, dtype=torch.float64)),
    )


def ring8_unequal(scale: float = 1.0) -> ToyDataset:
    radius, std = RING_RADIUS * scale, RING_STD * scale
    weights = torch.tensor(RING_UNEQUAL_WEIGHTS, dtype=torch.float64)
    return ToyDataset(
        name="ring8_unequal",
        description=f"8 Gaussians on a circle of radius {radius:g}, std {std:g}, weights {list(RING_UNEQUAL_WEIGHTS)}",
        params={"modes": 8, "radius": radius, "std": std, "weights": list(RING_UNEQUAL_WEIGHTS)},
        extent=radius + 5 * std,
        mixture=_mixture(ring_means(8, radius), std, weights),
    )


def grid25(scale: float = 1.0) -> ToyDataset:
    spacing, std = GRID_SPACING * scale, GRID_STD * scale
    return ToyDataset(
        name="grid25",
        description=f"5x5 grid of equal Gaussians, spacing {spacing:g}, std {std:g}",
        params={"modes": 25, "spacing": spacing, "std": std, "weights": [1 / 25] * 25},
        extent=2 * spacing + 10 * std,
        mixture=_mixture(grid_means(5, spacing), std, torch.ones(25, dtype=torch.float64)),
    )


def checkerboard(scale: float = 1.0) -> ToyDataset:
    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = _device(generator)
        x1 = torch.rand(n, generator=generator, device=dev) * 4 - 2
        row = torch.randint(0, 2, (n,), generator=generator, device=dev)
        x2 = torch.rand(n, generator=generator, device=dev) - 2 * row
        x2 = x2 + torch.remainder(torch.floor(x1), 2)
        return torch.stack([x1, x2], dim=1) * scale

    return ToyDataset(
        name="checkerboard",
        description=f"uniform on the black squares of a 4x4 checkerboard on [-{2 * scale:g}, {2 * scale:g}]^2",
        params={"squares": 8, "half_width": 2.0 * scale},
        extent=2.2 * scale,
        sampler=sampler,
    )


def moons(scale: float = 1.0) -> ToyDataset:
    s = MOONS_SCALE * scale

    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = _device(generator)
        upper = torch.rand(n, generator=generator, device=dev) < 0.5
        theta = torch.rand(n, generator=generator, device=dev) * math.pi
        x = torch.where(upper, theta.cos(), 1 - theta.cos())
        y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
        pts = torch.stack([x - 0.5, y - 0.25], dim=1)
        pts = pts + MOONS_NOISE * torch.randn(n, 2, generator=generator, device=dev)
        return pts * s

    return ToyDataset(
        name="moons",
        description=f"two interleaving half circles, noise std {MOONS_NOISE * s:g}, scale {s:g}",
        params={"noise": MOONS_NOISE * s, "scale": s},
        extent=(1.5 + 4 * MOONS_NOISE) * s,
        sampler=sampler,
    )


DATASETS: dict[str, Callable[[float], ToyDataset]] = {
    "ring8": ring8,
    "ring8_unequal": ring8_unequal,
    "grid25": grid25,
    "checkerboard": checkerboard,
    "moons": moons,
}


def make_dataset(name: str, scale: float = 1.0) -> ToyDataset:
    """The toy dataset registered as ``name`` (see :data:`DATASETS`), lengths times ``scale``."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DistillError(f"unknown toy dataset {name!r}; choose one of {', '.join(DATASETS)}.{hint}")
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise DistillError(f"toy dataset scale must be a positive number, got {scale!r}")
    return DATASETS[name](float(scale))
