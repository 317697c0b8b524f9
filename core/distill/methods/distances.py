"""Per-sample distances used as regression losses by several methods.

* ``mse``: squared L2, averaged over the sample's dimensions.
* ``pseudo_huber``: ``sqrt(||a-b||^2 + c^2) - c`` (Song & Dhariwal 2023, "Improved
  Techniques for Training Consistency Models", eq. 8), with ``c`` defaulting to
  ``0.00054 * sqrt(d)`` for a sample of ``d`` dimensions as in that paper.
* ``l1``: mean absolute difference.

Every function returns a tensor of shape [B] so callers can weight samples.
"""
from __future__ import annotations

import math

import torch

from distill.errors import DistillError


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def mse(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    return (_flat(a) - _flat(b)).pow(2).mean(dim=1)


def l1(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    return (_flat(a) - _flat(b)).abs().mean(dim=1)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    diff = _flat(a) - _flat(b)
    d = diff.shape[1]
    c = 0.00054 * math.sqrt(d) if c is None else c
    return torch.sqrt(diff.pow(2).sum(dim=1) + c * c) - c


DISTANCES = {"mse": mse, "l1": l1, "pseudo_huber": pseudo_huber}


def get_distance(name: str):
    try:
        return DISTANCES[name]
    except KeyError:
        raise DistillError(f"unknown distance {name!r}; use one of {', '.join(DISTANCES)}") from None
