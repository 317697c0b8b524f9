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


def pick_feature_layers(net: nn.Module, names: list[str] | tuple[str, ...] | None, hint: str = "") -> dict[str, int]:
    """The layers (name -> channels) that several heads read: ``names`` in order, or all of
    ``net.feature_layers`` when ``names`` is None (LADD puts a head on every block).

    ``hint`` ends the error raised when ``net`` exposes no feature layers (what the user can do).
    """
    layers = getattr(net, "feature_layers", None)
    if not layers:
        raise DistillError(
            f"{type(net).__name__} exposes no feature_layers for discriminator heads"
            + (f"; {hint}" if hint else "; use a reference network from distill.nets")
        )
    chosen = list(layers) if names is None else list(names)
    if not chosen:
        raise DistillError(f"no feature layers chosen; pick some of {', '.join(layers)} (or leave the list unset for all)")
    unknown = [name for name in chosen if name not in layers]
    if unknown:
        raise DistillError(f"feature layers {unknown} not in {type(net).__name__}.feature_layers ({', '.join(layers)})")
    if len(set(chosen)) != len(chosen):
        raise DistillError(f"feature layers must be distinct; got {chosen}")
    return {name: int(layers[name]) for name in chosen}


class MultiLayerHead(nn.Module):
    """One :class:`PooledHead` per tapped layer (ADD, LADD: heads on several feature layers).

    ``forward(features, label=None)`` takes the ``{layer: tensor}`` dict of ``Denoiser.tap`` and
    returns the logits ``[K, B]``, one row per layer in the order given; the loss decides how to
    combine them. With ``labels > 0`` each head also reads an integer label per sample ``[B]``
    in ``[0, labels)``: a learned embedding of it is added to the pooled features before the
    MLP (zero-initialised, so a new label starts as no label). A discriminator conditioned on
    which of a multistep student's steps made a sample judges each step's outputs on their own.
    """

    def __init__(self, channels: dict[str, int], hidden: int | None = None, labels: int = 0) -> None:
        super().__init__()
        if not channels:
            raise DistillError("MultiLayerHead needs at least one layer")
        if labels < 0:
            raise DistillError(f"MultiLayerHead labels must be >= 0 (0: unconditional); got {labels}")
        self.layers = list(channels)
        # ModuleLists, not ModuleDicts: layer names hold dots ("blocks.0"), which module names may not
        self.heads = nn.ModuleList(PooledHead(int(c), hidden) for c in channels.values())
        self.labels = labels
        self.embeds = nn.ModuleList(nn.Embedding(labels, int(c)) for c in channels.values()) if labels else None
        if self.embeds is not None:
            for embed in self.embeds:
                nn.init.zeros_(embed.weight)
        self.config = {"channels": {k: int(v) for k, v in channels.items()}, "hidden": hidden, "labels": labels}

    def forward(self, features: dict[str, torch.Tensor], label: torch.Tensor | None = None) -> torch.Tensor:
        missing = [name for name in self.layers if name not in features]
        if missing:
            raise DistillError(f"MultiLayerHead got no features for layers {missing}; tap them with Denoiser.tap")
        if self.embeds is None or label is None:
            return torch.stack([head(features[name]) for name, head in zip(self.layers, self.heads)])
        logits = []
        for name, head, embed in zip(self.layers, self.heads, self.embeds):
            h = features[name]
            h = h.flatten(2).mean(dim=2) if h.ndim > 2 else h
            logits.append(head.mlp(h + embed(label)).squeeze(-1))
        return torch.stack(logits)
