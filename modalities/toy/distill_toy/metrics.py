"""Mode statistics of 2-D samples against a known Gaussian mixture.

Each sample is assigned to the mode ``k*`` that minimises the standardised
distance ``d_k(x) = |x - mu_k| / s_k``; it *belongs* to that mode when
``d_{k*}(x) <= radius`` (default 3 standard deviations), else it is an outlier.
For a true sample in 2-D, ``d`` follows a chi distribution with 2 degrees of
freedom, so ``P(d > 3) = exp(-9/2) = 1.1%`` of true samples are outliers.

With ``n`` samples in all and ``n_k`` belonging to mode ``k``:

* ``mode_weights``     ``n_k / sum_j n_j`` (all zeros if no sample belongs to a mode);
* ``mode_coverage``    fraction of modes with ``n_k >= min_share * w_k * n``, i.e. that
  received at least ``min_share`` (default 20%) of their expected share;
* ``mode_weight_tv``   total variation ``1/2 sum_k |mode_weights_k - w_k|`` (1.0 if no
  sample belongs to any mode);
* ``outlier_fraction`` ``1 - sum_k n_k / n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.errors import DistillError
from distill.process.mixture import GaussianMixture

#: Standardised distance within which a sample belongs to its nearest mode.
MODE_RADIUS = 3.0
#: Fraction of its expected share a mode must receive to count as covered.
MIN_SHARE = 0.2


@dataclass
class ModeStats:
    """Mode statistics of a sample set (see the module docstring for definitions)."""

    mode_coverage: float
    mode_weights: list[float]
    mode_weight_tv: float
    outlier_fraction: float
    counts: list[int]

    def to_dict(self) -> dict[str, float | list[float]]:
        return {
            "mode_coverage": self.mode_coverage,
            "mode_weights": self.mode_weights,
            "mode_weight_tv": self.mode_weight_tv,
            "outlier_fraction": self.outlier_fraction,
        }


def assign_modes(
    samples: torch.Tensor, mixture: GaussianMixture, radius: float = MODE_RADIUS
) -> torch.Tensor:
    """Index of the nearest mode (in standardised distance) per sample, ``-1`` for outliers."""
    x = samples.detach().reshape(samples.shape[0], -1).to(torch.float64).cpu()
    means = mixture.means.detach().to(torch.float64).cpu()
    stds = mixture.stds.detach().to(torch.float64).cpu().reshape(-1)
    if x.shape[1] != means.shape[1]:
        raise DistillError(
            f"samples have {x.shape[1]} values each but the mixture lives in {means.shape[1]}-D"
        )
    d = torch.cdist(x, means) / stds  # [n, K]
    dmin, k = d.min(dim=1)
    k = torch.where(torch.isfinite(dmin) & (dmin <= radius), k, torch.full_like(k, -1))
    return k


def mode_statistics(
    samples: torch.Tensor,
    mixture: GaussianMixture,
    radius: float = MODE_RADIUS,
    min_share: float = MIN_SHARE,
) -> ModeStats:
    """Mode coverage, weights, weight TV and outlier fraction of ``samples`` (see module docstring)."""
    n = samples.shape[0]
    if n == 0:
        raise DistillError("mode statistics need at least one sample")
    k = assign_modes(samples, mixture, radius)
    K = mixture.means.shape[0]
    counts = torch.bincount(k[k >= 0], minlength=K).to(torch.float64)
    weights = mixture.weights.detach().to(torch.float64).cpu().reshape(-1)
    weights = weights / weights.sum()
    inside = float(counts.sum())
    covered = counts >= min_share * weights * n
    if inside > 0:
        emp = counts / inside
        tv = 0.5 * float((emp - weights).abs().sum())
    else:
        emp = torch.zeros(K, dtype=torch.float64)
        tv = 1.0
    return ModeStats(
        mode_coverage=float(covered.to(torch.float64).mean()),
        mode_weights=[float(w) for w in emp],
        mode_weight_tv=tv,
        outlier_fraction=1.0 - inside / n,
        counts=[int(c) for c in counts],
    )
