"""Embeddings of scalar inputs: time and the extra scalars methods need.

:func:`sinusoidal_embedding` is the Transformer position encoding (Vaswani et al.
2017, Sec. 3.5) used for diffusion time in DDPM/ADM (Ho et al. 2020; Dhariwal &
Nichol 2021): for ``half = dim // 2`` frequencies ``f_k = max_period^(-k/half)``,
``emb(t) = [cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]``
(zero-padded when ``dim`` is odd).

:class:`ScalarConditioning` is the documented mechanism for extra scalar inputs a
method needs besides the time ``t``: a second time ``r`` (consistency trajectory
models, shortcut/flow maps, MeanFlow), a step size ``d`` (shortcut models), a
guidance scale ``w`` (guidance-distilled students). A network built with
``extra_inputs=("r",)`` is called ``net(x, t, cond, r=r)``; each declared name gets
its own sinusoidal embedding and two-layer MLP whose output is summed into the time
embedding. Rules:

* passing a name that was not declared raises :class:`ExtraInputError` (a
  ``DistillError`` and a ``TypeError``) naming the declared ones;
* a declared input that is omitted (or passed as None) contributes zero, exactly as
  if its MLP output were zero;
* each MLP's last layer is zero-initialised, so adding extra inputs to a network
  initialised from a teacher leaves its output unchanged at first.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError

__all__ = ["sinusoidal_embedding", "SinusoidalEmbedding", "ScalarConditioning", "ExtraInputError", "with_extra_inputs",
           "class_labels", "time_and_class_embedding"]


class ExtraInputError(DistillError, TypeError):
    """A network got a keyword input it was not built to read."""


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of one scalar per sample (``t``: ``[B]`` or scalar).

    ``scale`` multiplies ``t`` first (e.g. 1000 for ``t`` in [0, 1], so the fastest
    frequencies resolve small time differences, as DDPM's integer steps do).
    Computed in float32 or wider; returned in float32 (or t's dtype if wider).
    """
    if dim < 1:
        raise DistillError(f"embedding dim must be >= 1; got {dim}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        t = t.reshape(t.shape[0], -1)[:, 0]
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=dtype)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    args = (t.to(dtype) * scale)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module form of :func:`sinusoidal_embedding` followed by ``Linear-SiLU-Linear``."""

    def __init__(self, dim: int, out_dim: int, max_period: float = 10000.0, scale: float = 1.0, zero_init: bool = False):
        super().__init__()
        self.dim, self.max_period, self.scale = dim, max_period, scale
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        if zero_init:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.dim, self.max_period, self.scale)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ScalarConditioning(nn.Module):
    """Embeds the declared extra scalars and adds them to a time embedding.

    ``ScalarConditioning(("r", "w"), embed_dim=64, out_dim=256)``; then
    ``cond_emb = module(time_emb, r=r, w=w)`` returns
    ``time_emb + sum_name MLP_name(sinusoidal(value_name))`` over the names given
    (values: a tensor ``[B]``, a scalar tensor or a float; None or omitted = no
    contribution). See the module docstring for the rules.
    """

    def __init__(
        self,
        names: tuple[str, ...] | list[str] = (),
        embed_dim: int = 64,
        out_dim: int = 256,
        max_period: float = 10000.0,
        scale: float = 1000.0,
    ) -> None:
        super().__init__()
        names = tuple(names)
        for name in names:
            if not name.isidentifier():
                raise DistillError(f"extra input names must be Python identifiers (they are keyword arguments); got {name!r}")
        if len(set(names)) != len(names):
            raise DistillError(f"extra input names must be distinct; got {names}")
        self.names = names
        self.embeds = nn.ModuleDict(
            {name: SinusoidalEmbedding(embed_dim, out_dim, max_period, scale, zero_init=True) for name in names}
        )

    def check(self, values: dict[str, Any], owner: str = "network") -> None:
        unknown = [k for k in values if k not in self.names]
        if unknown:
            declared = ", ".join(self.names) if self.names else "none"
            raise ExtraInputError(
                f"{owner} got unexpected extra input(s) {', '.join(map(repr, unknown))}; it was built with "
                f"extra_inputs=({declared}). Build it with extra_inputs=({', '.join(repr(n) for n in (*self.names, *unknown))},) "
                "to condition on them."
            )

    def forward(self, emb: torch.Tensor, **values: Any) -> torch.Tensor:
        self.check(values)
        for name, value in values.items():
            if value is None:
                continue
            v = torch.as_tensor(value, device=emb.device)
            if v.ndim == 0:
                v = v.expand(emb.shape[0])
            emb = emb + self.embeds[name](v)
        return emb


def with_extra_inputs(net: nn.Module, names: tuple[str, ...] | list[str]) -> nn.Module:
    """A copy of reference network ``net`` that also reads the extra scalars ``names``.

    The copy is rebuilt from ``net.config`` with the union of its declared and the
    new names, and takes every weight of ``net``; the new embeddings start at zero
    (see the module docstring), so the copy computes exactly what ``net`` does until
    it is trained. This is how a student initialised from a teacher gains a second
    time ``r``, a step size ``d`` or a guidance scale ``w``.
    """
    names = tuple(names)
    declared = tuple(getattr(net, "extra_inputs", ()))
    if not names or set(names) <= set(declared):
        return copy.deepcopy(net)
    config = getattr(net, "config", None)
    if not isinstance(config, dict) or "extra_inputs" not in config:
        raise DistillError(
            f"{type(net).__name__} cannot take extra inputs {names}: only the reference networks of "
            "distill.nets (built with an `extra_inputs` argument) can; give the role a fresh reference network"
        )
    wanted = declared + tuple(n for n in names if n not in declared)
    rebuilt = type(net)(**{**config, "extra_inputs": list(wanted)})
    result = rebuilt.load_state_dict(net.state_dict(), strict=False)
    stray = [k for k in result.missing_keys if not k.startswith("extras.")] + list(result.unexpected_keys)
    if stray:
        raise DistillError(f"rebuilding {type(net).__name__} with extra inputs {names} changed its weights: {stray[:5]}")
    return rebuilt.to(next(net.parameters()).device)


def class_labels(cond: Any, num_classes: int | None, batch: int, device: torch.device, owner: str) -> torch.Tensor | None:
    """Validated Long labels ``[B]`` (``cond=None`` -> the null class ``num_classes``).

    Returns None for an unconditional network (``num_classes=None``), which must get
    ``cond=None``. Shared by every reference network with class labels.
    """
    if num_classes is None:
        if cond is not None:
            raise DistillError(
                f"{owner} was built unconditional (num_classes=None) but got cond; "
                "build it with num_classes=K for class-conditional data, or pass cond=None"
            )
        return None
    if cond is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    labels = torch.as_tensor(cond, device=device)
    if labels.is_floating_point() or labels.ndim != 1 or labels.shape[0] != batch:
        raise DistillError(
            f"{owner} expects cond as Long class labels [B={batch}] (null class = {num_classes}); "
            f"got dtype {labels.dtype}, shape {tuple(labels.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise DistillError(
            f"class labels must lie in [0, {num_classes}] ({num_classes} = null class); "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def time_and_class_embedding(net: nn.Module, t: torch.Tensor, cond: Any, extra: dict[str, Any], owner: str) -> torch.Tensor:
    """The conditioning vector (before SiLU) of a reference net with ``time_embed``,
    ``class_embed`` (``num_classes`` not None) and ``extras``: time + class + extra scalars."""
    net.extras.check(extra, owner=owner)
    emb = net.time_embed(t)
    labels = class_labels(cond, net.num_classes, emb.shape[0], emb.device, owner)
    if labels is not None:
        emb = emb + net.class_embed(labels)
    return net.extras(emb, **extra)
