"""A small Diffusion Transformer (DiT) for 16x16 - 32x32 images.

Reference: Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (DiT):
patchify, fixed 2-D sin-cos position embedding, Transformer blocks with
adaLN-Zero conditioning on time + class, a final adaptive LayerNorm + linear
decoder, unpatchify. Attention: Vaswani et al. 2017 via
``torch.nn.functional.scaled_dot_product_attention``.

Architecture (``p = patch_size``, ``N = (R / p)^2`` tokens, ``D = hidden``)::

    c      = MLP_t(sinusoidal(t * time_scale)) [+ class embedding] [+ extra scalars]       [B, D]
    tokens = Linear(rearrange(x, "b c (h p) (w p) -> b (h w) (p p c)")) + pos2d            [B, N, D]
    block k (adaLN-Zero):
        (a1, b1, g1, a2, b2, g2) = Linear_0(SiLU(c))                                       (zero-init)
        tokens = tokens + g1 * Attn(LN(tokens) * (1 + a1) + b1)
        tokens = tokens + g2 * MLP(LN(tokens) * (1 + a2) + b2)          (MLP: D -> 4D -> D, GELU)
    final:  (a, b) = Linear_0(SiLU(c));  out = Linear_0(LN(tokens) * (1 + a) + b)  [B, N, p p C]
    image  = rearrange(out, "b (h w) (p p c) -> b c (h p) (w p)")

The LayerNorms have no affine parameters (the adaptive scale/shift replace them).
adaLN-Zero initialises every modulation layer and the output linear to zero, so each
block starts as the identity and a fresh network predicts exactly zero. The
position embedding is the fixed 2-D sin-cos table of MAE/DiT (half the width
encodes the row, half the column), a non-persistent buffer rebuilt from the config.
Defaults (R=16, p=2 -> 64 tokens, D=192, 6 blocks, 3 heads) give 4.16M parameters;
one forward + backward at batch 64 measured ~1.0 s on one CPU core (forward alone
~0.46 s) -- about 3x the default UNet; ``hidden=96, depth=4`` (0.72M parameters,
~375 ms) matches the UNet's cost for quick CPU runs.

Conditioning follows :class:`distill.nets.MLPDenoiserNet`: ``cond`` is None or Long
labels ``[B]`` in ``[0, num_classes]``; ``num_classes`` is the null class and
``cond=None`` means the null class; extra scalars are declared with ``extra_inputs``
(:class:`distill.nets.embeddings.ScalarConditioning`).

Feature taps. A block's output is a token tensor ``[B, N, D]``;
:class:`distill.methods.heads.PooledHead` averages dims ``2..`` of its input, which on
``[B, N, D]`` would average over the *channels* and leave ``[B, N]`` (wrong axis: it
then fails, or silently misbehaves when ``N == D``). So every block owns a
parameter-free :class:`TokenGrid` sub-module ``blocks.k.grid`` that views the block's
output tokens as a grid ``[B, D, R/p, R/p]``; ``feature_layers`` lists these
(``"blocks.k.grid": hidden``), so PooledHead (mean over the positions) works
unchanged. A custom head that taps ``"blocks.k"`` directly gets tokens and must pool
over dim 1. The last entry (the last block) is the default discriminator layer.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from distill.errors import DistillError
from distill.nets.embeddings import ScalarConditioning, SinusoidalEmbedding, time_and_class_embedding
from distill.nets.unet import check_image

__all__ = ["DiTDenoiserNet", "DiTBlock", "TokenGrid", "sincos_2d"]


def sincos_2d(grid: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``[grid * grid, dim]`` (row-major tokens).

    The first ``dim / 2`` channels encode the row, the rest the column, each as
    ``[sin(pos w_k), cos(pos w_k)]`` with ``w_k = max_period^(-k / (dim / 4))``
    (MAE, He et al. 2022; DiT). ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise DistillError(f"2-D sin-cos position embedding needs hidden divisible by 4; got {dim}")
    quarter = dim // 4
    omega = torch.exp(-math.log(max_period) * torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one(p: torch.Tensor) -> torch.Tensor:
        args = p.reshape(-1, 1) * omega[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([one(rows), one(cols)], dim=1).float()


class TokenGrid(nn.Module):
    """Views tokens ``[B, N, D]`` (row-major) as a feature map ``[B, D, H, W]`` (no copy)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(tokens, "b (y x) d -> b d y x", y=self.height, x=self.width)


class Attention(nn.Module):
    """Multi-head self-attention over tokens (scaled dot-product)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(h), "b n (three k d) -> three b k n d", three=3, k=self.heads)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(a, "b k n d -> b n (k d)"))


class DiTBlock(nn.Module):
    """adaLN-Zero Transformer block; returns tokens and feeds them through ``self.grid`` (for taps)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.grid = TokenGrid(grid, grid)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a1, b1, g1, a2, b2, g2 = rearrange(self.ada(c), "b (six d) -> six b 1 d", six=6)
        h = h + g1 * self.attn(self.norm1(h) * (1 + a1) + b1)
        h = h + g2 * self.mlp(self.norm2(h) * (1 + a2) + b2)
        self.grid(h)  # a free view; exists so Denoiser.tap("blocks.k.grid") sees [B, D, H, W]
        return h


class DiTDenoiserNet(nn.Module):
    """DiT: ``forward(x [B, C, R, R], t [B], cond=None, **extra) -> [B, C, R, R]``.

    ``resolution`` must be divisible by ``patch_size`` and ``hidden`` by ``heads`` and
    by 4; inputs must be exactly ``[B, in_channels, resolution, resolution]``.
    ``time_scale`` multiplies t before the sinusoidal embedding of width
    ``time_dim`` (1000 suits t in [0, 1]).
    """

    def __init__(
        self,
        in_channels: int = 1,
        resolution: int = 16,
        patch_size: int = 2,
        hidden: int = 192,
        depth: int = 6,
        heads: int = 3,
        num_classes: int | None = None,
        time_scale: float = 1000.0,
        extra_inputs: tuple[str, ...] | list[str] = (),
        mlp_ratio: float = 4.0,
        time_dim: int = 256,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        extra_inputs = tuple(extra_inputs)
        if in_channels < 1 or patch_size < 1 or depth < 1 or heads < 1 or time_dim < 2 or mlp_ratio <= 0:
            raise DistillError(
                "DiTDenoiserNet needs in_channels, patch_size, depth, heads >= 1, time_dim >= 2, mlp_ratio > 0; "
                f"got in_channels={in_channels}, patch_size={patch_size}, depth={depth}, heads={heads}, "
                f"time_dim={time_dim}, mlp_ratio={mlp_ratio}"
            )
        if resolution < patch_size or resolution % patch_size:
            raise DistillError(f"resolution {resolution} must be a positive multiple of patch_size {patch_size}")
        if hidden < 4 or hidden % heads or hidden % 4:
            raise DistillError(
                f"hidden must be divisible by heads ({heads}) and by 4 (2-D position embedding); got hidden={hidden}"
            )
        if num_classes is not None and num_classes < 1:
            raise DistillError(f"num_classes must be None (unconditional) or >= 1; got {num_classes}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "resolution": resolution,
            "patch_size": patch_size,
            "hidden": hidden,
            "depth": depth,
            "heads": heads,
            "num_classes": num_classes,
            "time_scale": time_scale,
            "extra_inputs": list(extra_inputs),
            "mlp_ratio": mlp_ratio,
            "time_dim": time_dim,
            "max_period": max_period,
        }
        self.in_channels = in_channels
        self.resolution = resolution
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.extra_inputs = extra_inputs
        grid = resolution // patch_size

        self.time_embed = SinusoidalEmbedding(time_dim, hidden, max_period=max_period, scale=time_scale)
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.extras = ScalarConditioning(extra_inputs, time_dim, hidden, max_period=max_period, scale=time_scale)

        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, hidden)
        self.register_buffer("pos_embed", sincos_2d(grid, hidden)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, grid) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(hidden, 2 * hidden)
        self.final = nn.Linear(hidden, patch_size * patch_size * in_channels)
        for layer in (self.final_ada, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.feature_layers: dict[str, int] = {f"blocks.{k}.grid": hidden for k in range(depth)}

    @property
    def null_class(self) -> int | None:
        """The label of the null class (``num_classes``), or None if unconditional."""
        return self.num_classes

    def embed(self, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        """The conditioning vector (before SiLU) ``[B, hidden]``: time + class + extra scalars."""
        return time_and_class_embedding(self, t, cond, extra, "DiTDenoiserNet")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        check_image(x, self.in_channels, self.resolution, "DiTDenoiserNet")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = F.silu(self.embed(t, cond, **extra))
        p, grid = self.patch_size, self.resolution // self.patch_size
        h = self.patch_embed(rearrange(x, "b c (y p1) (x p2) -> b (y x) (p1 p2 c)", p1=p, p2=p))
        h = h + self.pos_embed.to(h.dtype)
        for block in self.blocks:
            h = block(h, c)
        a, b = rearrange(self.final_ada(c), "b (two d) -> two b 1 d", two=2)
        out = self.final(self.final_norm(h) * (1 + a) + b)
        return rearrange(out, "b (y x) (p1 p2 c) -> b c (y p1) (x p2)", y=grid, x=grid, p1=p, p2=p)
