"""Discriminator heads that sit on another network's features (DMD2, ADD, LADD).

A head reads one tapped layer of a network (``Denoiser.tap``) and gives one logit per sample.
``pooled`` (:class:`PooledHead`): spatial features ``[B, C, ...]`` are average-pooled to
``[B, C]`` and a two-layer MLP classifies them. ``conv`` (:class:`ConvHead`): two 3x3
convolutions look at the feature map before the pool, as DMD2's bottleneck classifier and
ADD/LADD's heads do. Averaging first keeps only each channel's mean activation: on the digits,
a pooled head on the teacher's features told a distilled student's samples from the teacher's
no better than 54 % of the time after 300 updates, where conv heads on the same layers reached
60-84 % (docs/methods/dmd2.md).
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


HEADS = ("pooled", "conv")


class PooledHead(nn.Module):
    """Logit from pooled features: ``Linear(C, C) -> SiLU -> Linear(C, 1)``."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.config = {"kind": "pooled", "channels": channels, "hidden": hidden}

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C, ...]`` -> ``[B, C]``: the mean over the positions."""
        return features.flatten(2).mean(dim=2) if features.ndim > 2 else features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(features)).squeeze(-1)


class ConvHead(PooledHead):
    """Logit from a feature map: ``(Conv 3x3 -> SiLU) x 2``, mean over the positions, then the
    MLP of :class:`PooledHead`. ``spatial_dims`` (1 for sequences such as action chunks, 2 for
    images, 3 for video) is fixed at construction; features without positions (``[B, C]``) skip
    the convolutions."""

    def __init__(self, channels: int, spatial_dims: int, hidden: int | None = None) -> None:
        super().__init__(channels, hidden)
        if spatial_dims not in (0, 1, 2, 3):
            raise DistillError(f"ConvHead reads features with 0-3 spatial dimensions; got {spatial_dims}")
        self.spatial_dims = spatial_dims
        if spatial_dims:
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
            self.convs = nn.Sequential(conv(channels, channels, 3, padding=1), nn.SiLU(),
                                       conv(channels, channels, 3, padding=1), nn.SiLU())
        self.config = dict(self.config, kind="conv", spatial_dims=spatial_dims)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != self.spatial_dims + 2:
            raise DistillError(
                f"this conv discriminator head was built for features [B, C] + {self.spatial_dims} spatial dims, "
                f"got shape {tuple(features.shape)}; use the pooled head (gan_head / head: pooled) for this network"
            )
        if self.spatial_dims:
            features = self.convs(features)
        return super().pool(features)


def head_spatial_dims(kind: str, modality) -> int:
    """The feature maps' spatial rank a head of ``kind`` needs: the modality's sample rank without
    its channel axis for ``conv`` heads (images 2, action chunks 1), 0 for ``pooled`` ones (which
    need no modality)."""
    return len(modality.sample_shape) - 1 if kind == "conv" else 0


def make_head(kind: str, channels: int, spatial_dims: int, hidden: int | None = None) -> PooledHead:
    """A head of ``kind`` (:data:`HEADS`) on ``channels`` features with ``spatial_dims`` positions
    (the modality's sample rank minus its channel axis: ``len(sample_shape) - 1``)."""
    if kind == "pooled":
        return PooledHead(channels, hidden)
    if kind == "conv":
        return ConvHead(channels, spatial_dims, hidden)
    raise DistillError(f"discriminator head must be one of {', '.join(HEADS)}; got {kind!r}")


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

    def __init__(self, channels: dict[str, int], hidden: int | None = None, labels: int = 0, kind: str = "pooled",
                 spatial_dims: int = 0) -> None:
        super().__init__()
        if not channels:
            raise DistillError("MultiLayerHead needs at least one layer")
        if labels < 0:
            raise DistillError(f"MultiLayerHead labels must be >= 0 (0: unconditional); got {labels}")
        self.layers = list(channels)
        # ModuleLists, not ModuleDicts: layer names hold dots ("blocks.0"), which module names may not
        self.heads = nn.ModuleList(make_head(kind, int(c), spatial_dims, hidden) for c in channels.values())
        self.labels = labels
        self.embeds = nn.ModuleList(nn.Embedding(labels, int(c)) for c in channels.values()) if labels else None
        if self.embeds is not None:
            for embed in self.embeds:
                nn.init.zeros_(embed.weight)
        self.config = {"channels": {k: int(v) for k, v in channels.items()}, "hidden": hidden, "labels": labels,
                       "kind": kind, "spatial_dims": spatial_dims}

    def forward(self, features: dict[str, torch.Tensor], label: torch.Tensor | None = None) -> torch.Tensor:
        missing = [name for name in self.layers if name not in features]
        if missing:
            raise DistillError(f"MultiLayerHead got no features for layers {missing}; tap them with Denoiser.tap")
        if self.embeds is None or label is None:
            return torch.stack([head(features[name]) for name, head in zip(self.layers, self.heads)])
        logits = []
        for name, head, embed in zip(self.layers, self.heads, self.embeds):
            logits.append(head.mlp(head.pool(features[name]) + embed(label)).squeeze(-1))
        return torch.stack(logits)
