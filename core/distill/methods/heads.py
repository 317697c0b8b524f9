"""Discriminator heads that sit on another network's features (DMD2, ADD, LADD).

A head reads one tapped layer of a network (``Denoiser.tap``): spatial features
``[B, C, ...]`` are average-pooled to ``[B, C]``; a two-layer MLP gives one logit.
"""
from __future__ import annotations

import torch
from torch import nn

from distill.errors import DistillError


def pick_feature_layer(net: nn.Module, name: str | None) -> tuple[str, int]:
    layers = getattr(net, "feature_layers", None)
    if not layers:
        raise DistillError(
            f"{type(net).__name__} exposes no feature_layers for a discriminator head; "
            "use a reference network from distill.nets or set gan_weight=0"
        )
    if name is None:
        name = list(layers)[-1]
    if name not in layers:
        raise DistillError(f"feature layer {name!r} not in {type(net).__name__}.feature_layers ({', '.join(layers)})")
    return name, int(layers[name])


class PooledHead(nn.Module):
    """Logit from pooled features: ``Linear(C, C) -> SiLU -> Linear(C, 1)``."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.config = {"channels": channels, "hidden": hidden}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim > 2:
            features = features.flatten(2).mean(dim=2)
        return self.mlp(features).squeeze(-1)
