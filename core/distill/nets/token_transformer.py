"""A small bidirectional Transformer over token sequences that returns logits (discrete diffusion).

The denoiser of masked / uniform discrete diffusion (D3PM, Austin et al. 2021; MDLM, Sahoo et
al. 2024, who use a DiT-style bidirectional Transformer with adaLN time conditioning): every
position attends to every other (no causal mask), and the output at each position is a vector
of logits over the data vocabulary (never over the mask token: the masked process gives the
mask zero probability, :meth:`distill.process.MaskedProcess.x0_log_probs`).

Architecture (``L = seq_len``, ``D = hidden``, ``V = vocab_size``, inputs in ``[0, V]`` where
``V`` is the mask id)::

    c      = MLP_t(sinusoidal(t * time_scale)) [+ class embedding] [+ extra scalars]      [B, D]
    tokens = Embedding(V + 1, D)(x) [+ P]                                                [B, L, D]
    block k (adaLN-Zero, Peebles & Xie 2023):
        (a1, b1, g1, a2, b2, g2) = Linear_0(SiLU(c))
        tokens = tokens + g1 * RoPEAttn(LN(tokens) * (1 + a1) + b1)
        tokens = tokens + g2 * MLP(LN(tokens) * (1 + a2) + b2)
    final: (a, b) = Linear_0(SiLU(c));  logits = Linear_0(LN(tokens) * (1 + a) + b)     [B, L, V]

Positions enter through rotary embeddings of queries and keys (RoFormer, Su et al. 2021,
eq. 34; MDLM's DiT uses them too): attention scores depend on relative offsets, which is what
a structured language (the same layout repeated, e.g. three equations) needs to share one
rule across its repeats. Rotary embeddings alone cannot say *where* a position is: from the
fully masked start every position computes the same thing, so a language with a fixed layout
(``aa+bb=ccc;`` at offsets 0, 10, 20) comes out shifted (a teacher trained that way drew
``64;60+15=080;...``, 0 % valid). ``absolute_positions`` (default on) adds a learned
embedding ``P [L, D]`` per position (ViT / GPT-2 style) to the token embeddings.

Zero-initialised modulation and output layers make a fresh network return all-zero logits
(the uniform distribution over the vocabulary). Defaults (D=64, 3 blocks, 4 heads) give 0.25M
parameters for V=13, L=30; a forward + backward at batch 128 takes ~0.15 s on one (shared) CPU core.

Extra scalar inputs (``extra_inputs``) are :class:`distill.nets.embeddings.ScalarConditioning`:
the mixture variable ``lam`` of a Di4C student enters this way, zero-initialised, so a
teacher-initialised student starts as an exact copy of the teacher.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from distill.errors import DistillError
from distill.nets.embeddings import ScalarConditioning, SinusoidalEmbedding, time_and_class_embedding

__all__ = ["TokenTransformerNet", "TokenBlock"]


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [length, head_dim / 2] of RoPE (Su et al. 2021): angle(p, k) = p base^(-2k / d)."""
    if head_dim % 2:
        raise DistillError(f"rotary position embeddings need an even head width; got {head_dim}")
    freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * freq[None, :]
    return angle.cos().float(), angle.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of channels of ``x`` [B, H, L, d] by the position angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


class RotaryAttention(nn.Module):
    """Multi-head bidirectional self-attention with rotary position embeddings."""

    def __init__(self, hidden: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        cos, sin = rotary_tables(seq_len, hidden // heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(h), "b n (three k d) -> three b k n d", three=3, k=self.heads)
        cos, sin = self.cos.to(q.dtype), self.sin.to(q.dtype)
        a = F.scaled_dot_product_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v)
        return self.proj(rearrange(a, "b k n d -> b n (k d)"))


class TokenBlock(nn.Module):
    """adaLN-Zero Transformer block over a token sequence (bidirectional attention)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, seq_len: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = RotaryAttention(hidden, heads, seq_len)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a1, b1, g1, a2, b2, g2 = rearrange(self.ada(c), "b (six d) -> six b 1 d", six=6)
        h = h + g1 * self.attn(self.norm1(h) * (1 + a1) + b1)
        return h + g2 * self.mlp(self.norm2(h) * (1 + a2) + b2)


class TokenTransformerNet(nn.Module):
    """``forward(x Long[B, L], t [B], cond=None, **extra) -> logits [B, L, vocab_size]``.

    ``x`` holds tokens in ``[0, vocab_size]`` (``vocab_size`` is the mask token of the masked
    process; the uniform process never uses it). ``num_classes`` adds a class-conditional
    embedding with the null class ``num_classes`` (None: unconditional).
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        hidden: int = 64,
        depth: int = 3,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        time_scale: float = 1000.0,
        extra_inputs: tuple[str, ...] | list[str] = (),
        time_dim: int = 128,
        max_period: float = 10000.0,
        absolute_positions: bool = True,
    ) -> None:
        super().__init__()
        extra_inputs = tuple(extra_inputs)
        if vocab_size < 2 or seq_len < 1 or depth < 1 or heads < 1 or mlp_ratio <= 0 or time_dim < 2:
            raise DistillError(
                "TokenTransformerNet needs vocab_size >= 2, seq_len, depth, heads >= 1, mlp_ratio > 0 and "
                f"time_dim >= 2; got vocab_size={vocab_size}, seq_len={seq_len}, depth={depth}, heads={heads}, "
                f"mlp_ratio={mlp_ratio}, time_dim={time_dim}"
            )
        if hidden < heads or hidden % heads or (hidden // heads) % 2:
            raise DistillError(f"hidden ({hidden}) must be a multiple of heads ({heads}) with an even width per head (rotary embeddings)")
        self.config: dict[str, Any] = {
            "vocab_size": vocab_size, "seq_len": seq_len, "hidden": hidden, "depth": depth, "heads": heads,
            "mlp_ratio": mlp_ratio, "num_classes": num_classes, "time_scale": time_scale,
            "extra_inputs": list(extra_inputs), "time_dim": time_dim, "max_period": max_period,
            "absolute_positions": absolute_positions,
        }
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.extra_inputs = extra_inputs
        self.time_embed = SinusoidalEmbedding(time_dim, hidden, max_period=max_period, scale=time_scale)
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.extras = ScalarConditioning(extra_inputs, time_dim, hidden, max_period=max_period, scale=time_scale)
        self.token_embed = nn.Embedding(vocab_size + 1, hidden)  # + the mask token
        self.position_embed = nn.Parameter(torch.randn(seq_len, hidden) * 0.02) if absolute_positions else None
        self.blocks = nn.ModuleList(TokenBlock(hidden, heads, mlp_ratio, seq_len) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(hidden, 2 * hidden)
        self.final = nn.Linear(hidden, vocab_size)
        for layer in (self.final_ada, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.feature_layers: dict[str, int] = {f"blocks.{k}": hidden for k in range(depth)}

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    def embed(self, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        """The conditioning vector (before SiLU) ``[B, hidden]``: time + class + extra scalars."""
        return time_and_class_embedding(self, t, cond, extra, "TokenTransformerNet")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        if x.is_floating_point() or x.ndim != 2 or x.shape[1] != self.seq_len:
            raise DistillError(
                f"TokenTransformerNet expects integer tokens [B, {self.seq_len}]; got {x.dtype} {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = F.silu(self.embed(t, cond, **extra))
        h = self.token_embed(x)
        if self.position_embed is not None:
            h = h + self.position_embed
        for block in self.blocks:
            h = block(h, c)
        a, b = rearrange(self.final_ada(c), "b (two d) -> two b 1 d", two=2)
        return self.final(self.final_norm(h) * (1 + a) + b)
