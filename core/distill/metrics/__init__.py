"""Sample-based metrics shared by modalities (distances between point clouds, ...)."""
from __future__ import annotations

from distill.metrics.distances import (
    median_bandwidths,
    median_pairwise_distance,
    mmd_rbf,
    random_directions,
    sliced_wasserstein,
    wasserstein_1d,
)

__all__ = [
    "median_bandwidths",
    "median_pairwise_distance",
    "mmd_rbf",
    "random_directions",
    "sliced_wasserstein",
    "wasserstein_1d",
]
