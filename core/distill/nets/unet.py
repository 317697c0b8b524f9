"""A small class-conditional UNet for 16x16 - 32x32 images (DDPM / ADM style).

References: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"
(the diffusion UNet: wide ResNet blocks, self-attention at 16x16, sinusoidal time
embedding); Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"
(ADM: adaptive group normalisation, class embedding added to the time embedding,
zero-initialised residual and output convolutions, ``num_res_blocks + 1`` decoder
blocks per level reading concatenated skips); Ronneberger et al. 2015 (U-Net).

Architecture (``C = base_channels``, ``m_i = channel_mults[i]``, ``L = len(channel_mults)``)::

    e    = SiLU(MLP_t(sinusoidal(t * time_scale)) [+ class embedding] [+ extra scalars])     [B, time_dim]
    h    = Conv3x3(x)                                                     -> skip   [B, C, R, R]
    for level i = 0 .. L-1   (resolution R / 2^i)
        num_res_blocks x { h = ResBlock(h, e) -> C m_i [; h = Attention(h)] }  -> skip each
        if i < L-1: h = Conv3x3 stride 2 (h)                                   -> skip
    mid: h = ResBlock(h, e); h = Attention(h); h = ResBlock(h, e)          (tap "mid")
    for level i = L-1 .. 0
        (num_res_blocks + 1) x { h = ResBlock(concat(h, skip.pop()), e) -> C m_i [; Attention] }
        if i > 0: h = Conv3x3(nearest-upsample x2 (h))
    out  = Conv3x3(SiLU(GroupNorm(h)))          (zero-initialised: a fresh net predicts 0)

    ResBlock(h, e) = skip(h) + Conv3x3_0(Dropout(SiLU(GN(z) * (1 + scale) + shift)))
        z = Conv3x3(SiLU(GN(h))),  (scale, shift) = Linear(e)     -- AdaGN / FiLM
        (Conv3x3_0 is zero-initialised, skip is a 1x1 conv when the width changes)
    Attention(h) = h + Proj_0(SDPA(q, k, v)) over the H*W positions of GN(h),
        ``channels // head_channels`` heads (torch scaled_dot_product_attention)

Attention sits at every resolution listed in ``attention_resolutions`` (8 by
default, i.e. the 8x8 level of a 16x16 net) and always in the middle. The
defaults (C=32, mults (1, 2), one block per level, time_dim 128) give 0.77M
parameters (768,705 with 10 classes); one forward + backward at batch 64 on 16x16
measured ~370 ms on one CPU core (torch 2.11, OMP_NUM_THREADS=1; forward alone
~140 ms), ~80 % of it in the 3x3 convolutions (~24 GFLOP per step), so it scales
with cores and with ``base_channels**2``.

Conditioning follows :class:`distill.nets.MLPDenoiserNet`: ``cond`` is None or Long
labels ``[B]`` in ``[0, num_classes]``, ``num_classes`` is the null class and
``cond=None`` means the null class; extra scalars (``r``, ``d``, ``w``, ...) are
declared with ``extra_inputs`` and go through
:class:`distill.nets.embeddings.ScalarConditioning`.

``feature_layers`` names sub-modules usable with :meth:`distill.Denoiser.tap`, each
producing ``[B, channels, H, W]`` (so :class:`distill.methods.heads.PooledHead`
average-pools them directly): the last encoder stage of every level
(``"down.k"``), the last decoder stage of every level (``"up.k"``) and, *last* so it
is the default discriminator layer, the bottleneck ``"mid"`` (as DMD2 does on its
UNet teachers). ``config`` holds the constructor arguments (JSON-able).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from distill.errors import DistillError
from distill.nets.embeddings import ScalarConditioning, SinusoidalEmbedding, time_and_class_embedding

__all__ = ["UNetDenoiserNet", "ResBlock", "SelfAttention2d"]


def _groups(channels: int, max_groups: int = 32) -> int:
    """Largest power-of-two group count <= max_groups dividing ``channels``."""
    groups = max_groups
    while channels % groups:
        groups //= 2
    return groups


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def check_image(x: torch.Tensor, channels: int, resolution: int, owner: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != resolution or x.shape[3] != resolution:
        raise DistillError(
            f"{owner}(in_channels={channels}, resolution={resolution}) expects x of shape "
            f"[B, {channels}, {resolution}, {resolution}]; got {tuple(x.shape)}"
        )


class ResBlock(nn.Module):
    """Residual block with AdaGN: ``skip(h) + conv2(drop(SiLU(GN(conv1(SiLU(GN(h)))) (1+s) + b)))``."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.conv1(F.silu(self.norm1(h)))
        scale, shift = rearrange(self.emb(emb), "b (two c) -> two b c 1 1", two=2)
        z = F.silu(self.norm2(z) * (1 + scale) + shift)
        return self.skip(h) + self.conv2(self.dropout(z))


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual, zero-initialised output."""

    def __init__(self, channels: int, head_channels: int = 32) -> None:
        super().__init__()
        if channels % head_channels:
            head_channels = channels  # a single head when the width is not a multiple
        self.heads = channels // head_channels
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        height, width = h.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(h)), "b (three n d) y x -> three b n (y x) d", three=3, n=self.heads)
        a = F.scaled_dot_product_attention(q, k, v)
        a = rearrange(a, "b n (y x) d -> b (n d) y x", y=height, x=width)
        return h + self.proj(a)


class Stage(nn.Module):
    """One ResBlock, optionally followed by self-attention; output ``[B, C, H, W]`` (tap-able)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, attention: bool, dropout: float, head_channels: int):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, dropout)
        self.attn = SelfAttention2d(out_channels, head_channels) if attention else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(h, emb)
        return self.attn(h) if self.attn is not None else h


class Middle(nn.Module):
    """Bottleneck ``ResBlock -> Attention -> ResBlock``; its output is the ``"mid"`` feature."""

    def __init__(self, channels: int, emb_dim: int, dropout: float, head_channels: int) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim, dropout)
        self.attn = SelfAttention2d(channels, head_channels)
        self.res2 = ResBlock(channels, channels, emb_dim, dropout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(h, emb)), emb)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNetDenoiserNet(nn.Module):
    """ADM-style UNet: ``forward(x [B, C, R, R], t [B], cond=None, **extra) -> [B, C, R, R]``.

    ``resolution`` must be divisible by ``2^(len(channel_mults) - 1)``; inputs must
    be exactly ``[B, in_channels, resolution, resolution]``. ``time_scale``
    multiplies t before the sinusoidal embedding (1000 suits t in [0, 1]; use the
    Denoiser's ``time_input="log_sigma"`` for EDM-range times). ``head_channels`` is
    the width of one attention head (ADM's ``num_head_channels``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        resolution: int = 16,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] | list[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] | list[int] = (8,),
        num_classes: int | None = None,
        time_dim: int = 128,
        time_scale: float = 1000.0,
        dropout: float = 0.0,
        extra_inputs: tuple[str, ...] | list[str] = (),
        head_channels: int = 32,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        extra_inputs = tuple(extra_inputs)
        if in_channels < 1 or base_channels < 1 or num_res_blocks < 1 or time_dim < 2 or head_channels < 1:
            raise DistillError(
                "UNetDenoiserNet needs in_channels, base_channels, num_res_blocks, head_channels >= 1 and "
                f"time_dim >= 2; got in_channels={in_channels}, base_channels={base_channels}, "
                f"num_res_blocks={num_res_blocks}, time_dim={time_dim}, head_channels={head_channels}"
            )
        if not channel_mults or min(channel_mults) < 1:
            raise DistillError(f"channel_mults must be a non-empty sequence of positive ints; got {channel_mults}")
        factor = 2 ** (len(channel_mults) - 1)
        if resolution < factor or resolution % factor:
            raise DistillError(
                f"resolution {resolution} must be a positive multiple of 2^(len(channel_mults)-1) = {factor} "
                f"(channel_mults={channel_mults}); use fewer levels or another resolution"
            )
        if num_classes is not None and num_classes < 1:
            raise DistillError(f"num_classes must be None (unconditional) or >= 1; got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise DistillError(f"dropout must lie in [0, 1); got {dropout}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "resolution": resolution,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions),
            "num_classes": num_classes,
            "time_dim": time_dim,
            "time_scale": time_scale,
            "dropout": dropout,
            "extra_inputs": list(extra_inputs),
            "head_channels": head_channels,
            "max_period": max_period,
        }
        self.in_channels = in_channels
        self.resolution = resolution
        self.num_classes = num_classes
        self.extra_inputs = extra_inputs

        self.time_embed = SinusoidalEmbedding(time_dim, time_dim, max_period=max_period, scale=time_scale)
        self.class_embed = nn.Embedding(num_classes + 1, time_dim) if num_classes is not None else None
        self.extras = ScalarConditioning(extra_inputs, time_dim, time_dim, max_period=max_period, scale=time_scale)

        # Encoder: a flat list of Stage / Downsample modules; every output is a skip.
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        down: list[nn.Module] = []
        skip_channels = [base_channels]
        ch, res = base_channels, resolution
        feature_layers: dict[str, int] = {}
        for level, mult in enumerate(channel_mults):
            out_ch = base_channels * mult
            for _ in range(num_res_blocks):
                down.append(Stage(ch, out_ch, time_dim, res in attention_resolutions, dropout, head_channels))
                ch = out_ch
                skip_channels.append(ch)
            feature_layers[f"down.{len(down) - 1}"] = ch
            if level < len(channel_mults) - 1:
                down.append(Downsample(ch))
                skip_channels.append(ch)
                res //= 2
        self.down = nn.ModuleList(down)
        self.mid = Middle(ch, time_dim, dropout, head_channels)
        mid_channels = ch

        # Decoder: num_res_blocks + 1 stages per level, each reading one concatenated skip.
        up: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(channel_mults))):
            out_ch = base_channels * mult
            for _ in range(num_res_blocks + 1):
                up.append(Stage(ch + skip_channels.pop(), out_ch, time_dim, res in attention_resolutions, dropout, head_channels))
                ch = out_ch
            feature_layers[f"up.{len(up) - 1}"] = ch
            if level > 0:
                up.append(Upsample(ch))
                res *= 2
        assert not skip_channels
        self.up = nn.ModuleList(up)
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))

        feature_layers["mid"] = mid_channels  # last: the default layer for a discriminator head
        self.feature_layers: dict[str, int] = feature_layers

    @property
    def null_class(self) -> int | None:
        """The label of the null class (``num_classes``), or None if unconditional."""
        return self.num_classes

    def embed(self, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        """The conditioning vector (before SiLU) ``[B, time_dim]``: time + class + extra scalars."""
        return time_and_class_embedding(self, t, cond, extra, "UNetDenoiserNet")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        check_image(x, self.in_channels, self.resolution, "UNetDenoiserNet")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = F.silu(self.embed(t, cond, **extra))
        h = self.inp(x)
        skips = [h]
        for module in self.down:
            h = module(h) if isinstance(module, Downsample) else module(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
