"""A small time-conditioned MLP for vector data (toy 2-D mixtures, low-dim policies).

Architecture (``depth`` residual FiLM blocks of width ``hidden``)::

    e   = SiLU(MLP_t(sinusoidal(t * time_scale)) [+ class embedding] [+ extra scalars])   [B, time_dim]
    h   = W_in x
    h   = h + SiLU(W_k h * (1 + scale_k(e)) + shift_k(e))     for k = 0 .. depth-1
    out = W_out SiLU(h)

FiLM (Perez et al. 2018) lets the time embedding modulate every layer, which is what
makes small MLPs fit the multimodal, strongly time-dependent posterior mean of 2-D
mixtures; the residual form keeps it trainable at any depth. The conditioning vector
stays ``time_dim`` wide (not ``hidden``), so the FiLM projections cost
``time_dim x 2 hidden`` each: the default 3 x 256 net has ~307k parameters and one
forward + backward + Adam step at batch 256 takes ~5-9 ms on one or two CPU cores. The output is
whatever the network's Denoiser declares (x0, eps, v, flow or score).

Conditioning: ``cond`` is None or a Long tensor ``[B]`` of class labels in
``[0, num_classes]``; label ``num_classes`` is the *null class* used for
classifier-free guidance, and ``cond=None`` on a class-conditional net means the null
class. Extra scalar inputs (``r``, ``d``, ``w``, ...) follow
:class:`distill.nets.embeddings.ScalarConditioning`.

``feature_layers`` maps the names of sub-modules usable with
:meth:`distill.Denoiser.tap` (``"blocks.0"`` ...) to their output width, so a
discriminator head can sit on the network's features; ``config`` holds the
constructor arguments (JSON-able) so a checkpoint can rebuild the network with
``MLPDenoiserNet(**config)``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.nets.embeddings import ScalarConditioning, SinusoidalEmbedding, time_and_class_embedding

__all__ = ["MLPDenoiserNet", "FiLMBlock"]


class FiLMBlock(nn.Module):
    """``h + SiLU(W h * (1 + scale(e)) + shift(e))``; its output is the tapped feature."""

    def __init__(self, hidden: int, emb_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        return h + self.act(self.linear(h) * (1 + scale) + shift)


class MLPDenoiserNet(nn.Module):
    """Residual FiLM MLP: ``forward(x [B, dim], t [B], cond=None, **extra) -> [B, dim]``.

    ``time_scale`` multiplies t before the sinusoidal embedding (1000 suits t in
    [0, 1]; use the Denoiser's ``time_input="log_sigma"`` for EDM-range times).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        num_classes: int | None = None,
        extra_inputs: tuple[str, ...] | list[str] = (),
        time_scale: float = 1000.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1 or time_dim < 2:
            raise DistillError(
                f"MLPDenoiserNet needs dim >= 1, hidden >= 1, depth >= 1, time_dim >= 2; "
                f"got dim={dim}, hidden={hidden}, depth={depth}, time_dim={time_dim}"
            )
        if num_classes is not None and num_classes < 1:
            raise DistillError(f"num_classes must be None (unconditional) or >= 1; got {num_classes}")
        extra_inputs = tuple(extra_inputs)
        self.config: dict[str, Any] = {
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "time_dim": time_dim,
            "num_classes": num_classes,
            "extra_inputs": list(extra_inputs),
            "time_scale": time_scale,
            "max_period": max_period,
        }
        self.dim = dim
        self.num_classes = num_classes
        self.extra_inputs = extra_inputs
        self.time_embed = SinusoidalEmbedding(time_dim, time_dim, max_period=max_period, scale=time_scale)
        self.class_embed = nn.Embedding(num_classes + 1, time_dim) if num_classes is not None else None
        self.extras = ScalarConditioning(extra_inputs, time_dim, time_dim, max_period=max_period, scale=time_scale)
        self.emb_act = nn.SiLU()
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(FiLMBlock(hidden, time_dim) for _ in range(depth))
        self.out_act = nn.SiLU()
        self.out = nn.Linear(hidden, dim)
        self.feature_layers: dict[str, int] = {f"blocks.{k}": hidden for k in range(depth)}

    @property
    def null_class(self) -> int | None:
        """The label of the null class (``num_classes``), or None if unconditional."""
        return self.num_classes

    def embed(self, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        """The conditioning vector (before SiLU) ``[B, time_dim]``: time + class + extra scalars."""
        return time_and_class_embedding(self, t, cond, extra, "MLPDenoiserNet")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DistillError(f"MLPDenoiserNet(dim={self.dim}) expects x of shape [B, {self.dim}]; got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.emb_act(self.embed(t, cond, **extra))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_act(h))
