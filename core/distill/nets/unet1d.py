"""A 1-D temporal UNet with FiLM conditioning for sequences (diffusion-policy action chunks).

Reference: Chi et al. 2023, "Diffusion Policy: Visuomotor Policy Learning via Action
Diffusion" (RSS 2023, arXiv:2303.04137), Sec. IV-A "CNN-based diffusion policy": a 1-D
temporal convolutional UNet (Janner et al. 2022, "Planning with Diffusion", Sec. 3) over the
action sequence, where the observation features and the diffusion step enter every
convolutional block through FiLM (Perez et al. 2018), "channel-wise scale and bias".

Architecture (``d_i = down_dims[i]``, ``L = len(down_dims)``, ``k = kernel_size``)::

    e    = concat(MLP_t(sinusoidal(t * time_scale)) [+ extra scalars], cond)   [B, time_dim + cond_dim]
    h    = x^T                                                               [B, channels, horizon]
    for level i = 0 .. L-1
        h = ResBlock(h, e) -> d_i;  h = ResBlock(h, e)       -> skip       ("down.i" is the second)
        if i < L-1: h = Conv1d(k=3, stride 2)(h)              (horizon / 2^i -> / 2^(i+1))
    mid: h = ResBlock(h, e); h = ResBlock(h, e)                               (tap "mid")
    for level i = L-2 .. 0
        h = ResBlock(concat(h, skip_{i+1}), e) -> d_i; h = ResBlock(h, e)    ("up.i")
        h = ConvTranspose1d(k=4, stride 2)(h)
    out  = Conv1d_1x1(Block(h)) ^T                                           [B, horizon, channels]

    Block(h)       = Mish(GroupNorm(Conv1d_k(h)))
    ResBlock(h, e) = skip(h) + Block(Block(h) * (1 + scale) + shift),  (scale, shift) = Linear(Mish(e))

As in Chi et al., the observation features are a *global* condition concatenated with the
time embedding (not a per-position input), every residual block is modulated by it, and the
decoder has one level fewer than the encoder: it reads the skips of encoder levels 1 .. L-1
(the skip of level 0 is not read). FiLM uses ``1 + scale`` so that a zero modulation is the identity; the last
1x1 convolution is zero-initialised, so a fresh network predicts 0 (as the 2-D UNet of
:mod:`distill.nets.unet` does).

``horizon`` must be divisible by ``2^(L-1)``. The defaults (``down_dims=(64, 128, 256)``,
``k=5``, time_dim 64) give about 1.6M parameters for 2-D actions and an 8-D condition.

Conditioning: ``cond`` is None or a float tensor ``[B, cond_dim]`` (anything ``[B, ...]``
with ``cond_dim`` elements per sample is flattened); ``cond=None`` on a conditional network
is the all-zero condition (the null condition of classifier-free guidance). Extra scalar
inputs (``r``, ``d``, ``w``, ...) are declared with ``extra_inputs`` and go through
:class:`distill.nets.embeddings.ScalarConditioning`. ``feature_layers`` names the tap-able
sub-modules (``"down.i"``, ``"up.i"``, then ``"mid"`` last, the default discriminator layer),
each producing ``[B, C, positions]``; ``config`` holds the constructor arguments (JSON-able).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.nets.embeddings import ScalarConditioning, SinusoidalEmbedding

__all__ = ["UNet1DDenoiserNet", "ConvBlock1d", "FiLMResBlock1d"]


def _groups(channels: int, wanted: int) -> int:
    """Largest divisor of ``channels`` that is <= ``wanted`` (GroupNorm needs one)."""
    for g in range(min(wanted, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ConvBlock1d(nn.Module):
    """``Mish(GroupNorm(Conv1d(h)))`` with 'same' padding (Chi et al.'s ``Conv1dBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(_groups(out_channels, groups), out_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(h)))


class FiLMResBlock1d(nn.Module):
    """``skip(h) + Block(Block(h) * (1 + scale(e)) + shift(e))``: a residual block whose first
    block's channels are modulated by the conditioning vector ``e`` (FiLM)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.block1 = ConvBlock1d(in_channels, out_channels, kernel_size, groups)
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.block2 = ConvBlock1d(out_channels, out_channels, kernel_size, groups)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(F.mish(emb)).unsqueeze(-1).chunk(2, dim=1)
        z = self.block1(h) * (1 + scale) + shift
        return self.skip(h) + self.block2(z)


class _Level(nn.Module):
    """Two residual blocks; the output of the second is the level's tapped feature."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.res1 = FiLMResBlock1d(in_channels, out_channels, emb_dim, kernel_size, groups)
        self.res2 = FiLMResBlock1d(out_channels, out_channels, emb_dim, kernel_size, groups)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.res1(h, emb), emb)


class UNet1DDenoiserNet(nn.Module):
    """Temporal UNet: ``forward(x [B, horizon, channels], t [B], cond [B, cond_dim] | None, **extra)``
    returns ``[B, horizon, channels]`` (the native prediction of its Denoiser)."""

    def __init__(
        self,
        channels: int,
        horizon: int,
        cond_dim: int = 0,
        down_dims: tuple[int, ...] | list[int] = (64, 128, 256),
        kernel_size: int = 5,
        groups: int = 8,
        time_dim: int = 64,
        extra_inputs: tuple[str, ...] | list[str] = (),
        time_scale: float = 1000.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if channels < 1 or horizon < 1 or cond_dim < 0 or time_dim < 2 or not down_dims or min(down_dims) < 1:
            raise DistillError(
                f"UNet1DDenoiserNet needs channels >= 1, horizon >= 1, cond_dim >= 0, time_dim >= 2 and positive "
                f"down_dims; got channels={channels}, horizon={horizon}, cond_dim={cond_dim}, time_dim={time_dim}, "
                f"down_dims={down_dims}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise DistillError(f"UNet1DDenoiserNet kernel_size must be odd (same-length convolutions); got {kernel_size}")
        factor = 2 ** (len(down_dims) - 1)
        if horizon % factor:
            raise DistillError(
                f"UNet1DDenoiserNet with {len(down_dims)} levels halves the horizon {len(down_dims) - 1} times, so the "
                f"horizon must be a multiple of {factor}; got {horizon}. Use a horizon such as {max(factor, horizon // factor * factor)} "
                "or fewer down_dims"
            )
        extra_inputs = tuple(extra_inputs)
        self.config: dict[str, Any] = {
            "channels": channels,
            "horizon": horizon,
            "cond_dim": cond_dim,
            "down_dims": list(down_dims),
            "kernel_size": kernel_size,
            "groups": groups,
            "time_dim": time_dim,
            "extra_inputs": list(extra_inputs),
            "time_scale": time_scale,
            "max_period": max_period,
        }
        self.channels, self.horizon, self.cond_dim = channels, horizon, cond_dim
        self.extra_inputs = extra_inputs
        self.time_embed = SinusoidalEmbedding(time_dim, time_dim, max_period=max_period, scale=time_scale)
        self.extras = ScalarConditioning(extra_inputs, time_dim, time_dim, max_period=max_period, scale=time_scale)
        emb_dim = time_dim + cond_dim
        widths = [channels] + down_dims
        self.down = nn.ModuleList(
            _Level(widths[i], widths[i + 1], emb_dim, kernel_size, groups) for i in range(len(down_dims))
        )
        self.downsample = nn.ModuleList(
            nn.Conv1d(d, d, 3, stride=2, padding=1) for d in down_dims[:-1]
        )
        self.mid = _Level(down_dims[-1], down_dims[-1], emb_dim, kernel_size, groups)
        # decoder level i (i = L-2 .. 0) reads the deeper features and the skip of encoder level i + 1
        self.up = nn.ModuleList(
            _Level(down_dims[i + 1] * 2, down_dims[i], emb_dim, kernel_size, groups) for i in range(len(down_dims) - 1)
        )
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(d, d, 4, stride=2, padding=1) for d in down_dims[:-1])
        self.final = ConvBlock1d(down_dims[0], down_dims[0], kernel_size, groups)
        self.out = nn.Conv1d(down_dims[0], channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        layers = {f"down.{i}": d for i, d in enumerate(down_dims)}
        layers.update({f"up.{i}": down_dims[i] for i in range(len(down_dims) - 1)})
        layers["mid"] = down_dims[-1]
        self.feature_layers: dict[str, int] = layers

    def embed(self, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        """The FiLM conditioning vector ``[B, time_dim + cond_dim]``: time (+ extra scalars), then cond."""
        self.extras.check(extra, owner="UNet1DDenoiserNet")
        emb = self.extras(self.time_embed(t), **extra)
        if self.cond_dim == 0:
            if cond is not None:
                raise DistillError(
                    "UNet1DDenoiserNet was built without a condition (cond_dim=0) but got cond; "
                    "build it with cond_dim=D for a D-dimensional global condition, or pass cond=None"
                )
            return emb
        if cond is None:
            c = emb.new_zeros(emb.shape[0], self.cond_dim)
        else:
            c = torch.as_tensor(cond, device=emb.device)
            if not c.is_floating_point() or c.shape[0] != emb.shape[0] or c[0].numel() != self.cond_dim:
                raise DistillError(
                    f"UNet1DDenoiserNet(cond_dim={self.cond_dim}) expects cond as floats [B={emb.shape[0]}, {self.cond_dim}]; "
                    f"got dtype {c.dtype}, shape {tuple(c.shape)}"
                )
            c = c.reshape(c.shape[0], -1).to(emb.dtype)
        return torch.cat([emb, c], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.horizon or x.shape[2] != self.channels:
            raise DistillError(
                f"UNet1DDenoiserNet(horizon={self.horizon}, channels={self.channels}) expects x of shape "
                f"[B, {self.horizon}, {self.channels}]; got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, cond, **extra)
        h = x.transpose(1, 2)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        # Decoder level i works at encoder level i+1's resolution and reads its skip, then
        # upsamples; encoder level 0's skip is not read (Chi et al.'s ConditionalUnet1D).
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([h, skips[i + 1]], dim=1), emb)
            h = self.upsample[i](h)
        return self.out(self.final(h)).transpose(1, 2)
