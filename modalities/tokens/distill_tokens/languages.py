"""Two generated languages with exact validity checkers, exact likelihoods and exact entropies.

Both are fixed-length token sequences, generated in code (nothing to download), so a sample of
any model can be scored against the true generator exactly.

**arithmetic** (character level). Three equations ``a+b=c;`` with ``a, b`` independent and
uniform on 0..99 and ``c = a + b``. Numbers are written in decimal with a fixed width, zero
padded (``a, b``: 2 digits, ``c``: 3 digits), so every equation is 10 characters and a sequence
is exactly 30 tokens; no padding token is needed::

    07+13=020;99+99=198;00+45=045;

Vocabulary: ``0123456789+=;`` (ids 0..12; the masked process adds the mask token, id 13).
Valid: each 10-character block reads ``dd+dd=ddd;`` with ``c = a + b``. Every valid sequence has
probability ``100^-6``, so the exact NLL of a valid sequence and the entropy of the language are
both ``6 log 100 = 27.631`` nats; an invalid sequence has probability 0 (NLL = inf).

**chain** (integer tokens ``0..V-1``, default V = 64, L = 32). Generated right to left: the last
token is uniform; then for j = L-1 .. 1, a non-zero ``x[j]`` fixes its predecessor,
``x[j-1] = x[j] // 4``, and after a zero the predecessor is uniform again. Valid: for every
``j >= 1`` with ``x[j] != 0``, ``x[j-1] == x[j] // 4``. The *free* positions are ``L-1`` and every
``j-1`` with ``x[j] = 0``; a valid sequence has probability ``V^-(number of free positions)``,
and the entropy is ``log V * E[number of free positions]``, computed exactly by propagating the
marginal of ``x[j]`` from right to left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from distill.errors import DistillError

__all__ = ["Language", "Arithmetic", "Chain", "LANGUAGES", "make_language"]


@dataclass(frozen=True)
class Language:
    """A generated language: ``sample``, ``valid``, ``nll`` (per sequence, nats), ``entropy``,
    ``operands`` (the values whose histogram should be uniform) and text ``decode``."""

    name: ClassVar[str] = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def operand_bins(self) -> int:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        """Bool [n]: the sequence has positive probability under the generator."""
        raise NotImplementedError

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p_true(x) in nats, float64 [n]; inf for invalid sequences."""
        raise NotImplementedError

    def entropy(self) -> float:
        """The exact entropy of the generator, nats per sequence."""
        raise NotImplementedError

    def operands(self, x: torch.Tensor) -> torch.Tensor:
        """The uniformly distributed values of valid sequences ``x``, flattened (Long)."""
        raise NotImplementedError

    def unigram(self) -> torch.Tensor:
        """The exact distribution of a token at a uniformly chosen position, float64 [V]."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> list[str]:
        raise NotImplementedError

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.seq_len:
            raise DistillError(f"{self.name} sequences are [n, {self.seq_len}] tokens; got shape {tuple(x.shape)}")
        return x.long().cpu()


ALPHABET = "0123456789+=;"
PLUS, EQUALS, SEMI = 10, 11, 12


@dataclass(frozen=True)
class Arithmetic(Language):
    """Three zero-padded equations ``aa+bb=ccc;`` with a, b ~ U{0..99} (see module docstring)."""

    equations: int = 3
    name: ClassVar[str] = "arithmetic"
    WIDTH: ClassVar[int] = 10  # "aa+bb=ccc;"
    DIGIT_OFFSETS: ClassVar[tuple[int, ...]] = (0, 1, 3, 4, 6, 7, 8)  # a1 a0 b1 b0 c2 c1 c0 in a block

    @staticmethod
    def blocks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The 10-token blocks ``aa+bb=ccc;`` of the equations ``a + b`` (``[..., 10]``)."""
        c = a + b
        return torch.stack([a // 10, a % 10, torch.full_like(a, PLUS), b // 10, b % 10, torch.full_like(a, EQUALS),
                            c // 100, (c // 10) % 10, c % 10, torch.full_like(a, SEMI)], dim=-1)

    @property
    def vocab_size(self) -> int:
        return len(ALPHABET)

    @property
    def seq_len(self) -> int:
        return self.WIDTH * self.equations

    @property
    def operand_bins(self) -> int:
        return 100

    def encode(self, text: str | list[str]) -> torch.Tensor:
        texts = [text] if isinstance(text, str) else list(text)
        bad = [t for t in texts if len(t) != self.seq_len or any(ch not in ALPHABET for ch in t)]
        if bad:
            raise DistillError(f"arithmetic text must be {self.seq_len} characters of {ALPHABET!r}; got {bad[0]!r}")
        return torch.tensor([[ALPHABET.index(ch) for ch in t] for t in texts], dtype=torch.long)

    def decode(self, x: torch.Tensor) -> list[str]:
        x = self._check(x)
        return ["".join(ALPHABET[int(v)] if 0 <= int(v) < len(ALPHABET) else "_" for v in row) for row in x]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        ab = torch.randint(0, 100, (n, self.equations, 2), generator=generator)
        return self.blocks(ab[..., 0], ab[..., 1]).reshape(n, self.seq_len)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self._check(x).reshape(-1, self.equations, self.WIDTH)

    def equation_valid(self, x: torch.Tensor) -> torch.Tensor:
        """Bool [n, equations]: each block reads ``dd+dd=ddd;`` and its sum is right."""
        e = self._blocks(x)
        shape_ok = (e[..., list(self.DIGIT_OFFSETS)] < 10).all(-1) & (e[..., 2] == PLUS) & (e[..., 5] == EQUALS) & (e[..., 9] == SEMI)
        a = e[..., 0] * 10 + e[..., 1]
        b = e[..., 3] * 10 + e[..., 4]
        c = e[..., 6] * 100 + e[..., 7] * 10 + e[..., 8]
        return shape_ok & (a + b == c)

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        return self.equation_valid(x).all(-1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        ok = self.valid(x)
        per = 2 * self.equations * math.log(100.0)
        return torch.where(ok, torch.full(ok.shape, per, dtype=torch.float64), torch.full(ok.shape, math.inf, dtype=torch.float64))

    def entropy(self) -> float:
        return 2 * self.equations * math.log(100.0)

    def operands(self, x: torch.Tensor) -> torch.Tensor:
        e = self._blocks(x)[self.valid(x)]
        return torch.cat([(e[..., 0] * 10 + e[..., 1]).flatten(), (e[..., 3] * 10 + e[..., 4]).flatten()])

    def unigram(self) -> torch.Tensor:
        """Exact: per block, 3 fixed symbols, 4 uniform operand digits, and the digits of c = a + b."""
        counts = torch.zeros(self.vocab_size, dtype=torch.float64)
        counts[PLUS] = counts[EQUALS] = counts[SEMI] = 1.0
        counts[:10] += 4 * 0.1  # the digits of a and b are uniform
        c = (torch.arange(100)[:, None] + torch.arange(100)[None, :]).flatten()
        for d in (c // 100, (c // 10) % 10, c % 10):
            counts[:10] += torch.bincount(d, minlength=10).double() / c.numel()
        return counts / self.WIDTH


@dataclass(frozen=True)
class Chain(Language):
    """Right-to-left chain: a non-zero x[j] fixes x[j-1] = x[j] // base (see module docstring)."""

    vocab: int = 64
    length: int = 32
    base: int = 4
    name: ClassVar[str] = "chain"

    def __post_init__(self) -> None:
        if self.vocab < 2 or self.length < 2 or self.base < 2:
            raise DistillError(f"chain language needs vocab, length, base >= 2; got {self.vocab}, {self.length}, {self.base}")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        return self.length

    @property
    def operand_bins(self) -> int:
        return self.vocab

    def decode(self, x: torch.Tensor) -> list[str]:
        return [" ".join(f"{int(v):2d}" for v in row) for row in self._check(x)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # Draw every position's fresh value up front (one generator call), then fill right to left.
        fresh = torch.randint(0, self.vocab, (n, self.length), generator=generator)
        x = torch.empty_like(fresh)
        x[:, -1] = fresh[:, -1]
        for j in range(self.length - 1, 0, -1):
            x[:, j - 1] = torch.where(x[:, j] != 0, x[:, j] // self.base, fresh[:, j - 1])
        return x

    def free(self, x: torch.Tensor) -> torch.Tensor:
        """Bool [n, L]: positions whose value the generator draws uniformly."""
        x = self._check(x)
        out = torch.zeros_like(x, dtype=torch.bool)
        out[:, -1] = True
        out[:, :-1] = x[:, 1:] == 0
        return out

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x)
        in_range = ((x >= 0) & (x < self.vocab)).all(-1)
        fixed = x[:, 1:] != 0
        ok = (x[:, :-1] == x[:, 1:] // self.base) | ~fixed
        return in_range & ok.all(-1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        ok = self.valid(x)
        n_free = self.free(x).sum(-1).double()
        return torch.where(ok, n_free * math.log(self.vocab), torch.full(ok.shape, math.inf, dtype=torch.float64))

    def marginals(self) -> torch.Tensor:
        """float64 [L, V]: the exact marginal of each x[j], propagated right to left."""
        V = self.vocab
        m = torch.zeros(self.length, V, dtype=torch.float64)
        m[-1] = 1.0 / V
        parent = torch.arange(V) // self.base
        for j in range(self.length - 1, 0, -1):
            nxt = torch.zeros(V, dtype=torch.float64)
            nxt.index_add_(0, parent[1:], m[j, 1:])  # x[j] != 0 fixes x[j-1]
            nxt += m[j, 0] / V  # after a zero, uniform
            m[j - 1] = nxt
        return m

    def entropy(self) -> float:
        m = self.marginals()
        expected_free = 1.0 + float(m[1:, 0].sum())
        return expected_free * math.log(self.vocab)

    def operands(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x)
        ok = self.valid(x)
        return x[ok][self.free(x)[ok]]

    def unigram(self) -> torch.Tensor:
        return self.marginals().mean(0)


LANGUAGES: dict[str, type[Language]] = {"arithmetic": Arithmetic, "chain": Chain}


def make_language(name: str, **kwargs) -> Language:
    if name not in LANGUAGES:
        raise DistillError(f"unknown language {name!r}; use one of {', '.join(LANGUAGES)}")
    return LANGUAGES[name](**kwargs)
