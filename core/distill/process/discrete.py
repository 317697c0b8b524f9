"""Discrete (token) forward processes: masked (absorbing) and uniform, with their exact posteriors.

A token keeps its value with probability ``alpha(t)`` (linear: 1 - t; cosine: cos(pi t / 2)),
t in [0, 1], and otherwise becomes the mask token (masked) or a uniform random token (uniform):

    q(x_t | x0) = alpha_t onehot(x0) + (1 - alpha_t) pi,   pi = onehot(mask) or 1/V
    (Austin et al. 2021, D3PM, eq. 1-3 with Q_t = alpha I + (1 - alpha) 1 pi^T).

``posterior(x_t, x0_probs, t, s)`` is the ancestral step for s < t, marginalised over the
model's distribution of x0:

    p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t),

which is exact whenever ``x0_probs`` is the true p(x0 | x_t), and equals ``x0_probs`` at s = 0.
For the masked process this is MDLM's posterior q(z_s | z_t, x) (Sahoo et al. 2024, sec. 3): linear in x0, because
q(x_t = mask | x0) does not depend on x0. For the uniform process q(x_t | x0) does, so each
x0 is weighted by 1 / q(x_t | x0) (D3PM eq. 3; the per-x0 closed form is UDLM's, Schiff et al. 2024).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor
from torch.nn.functional import one_hot

from distill.errors import DistillError
from distill.process._names import unknown_name

KEEP_SCHEDULES = ("linear", "cosine")


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Categorical draws from (unnormalised) ``probs [..., K]`` by the inverse CDF of uniforms
    ``u [..., 1]``, in float64: the index of the first category whose cumulative mass exceeds u."""
    cdf = probs.to(torch.float64).cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    return (cdf <= u).sum(-1).clamp(max=probs.shape[-1] - 1)


def _col(v: Tensor | float, ndim: int) -> Tensor:
    """float64 [B] or scalar -> shape [B, 1, ...] with ``ndim`` dims."""
    v = torch.as_tensor(v, dtype=torch.float64)
    return v.reshape(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True)
class DiscreteProcess:
    """Base of the token processes; ``vocab_size`` counts the data tokens (no mask)."""

    vocab_size: int
    schedule: str = "linear"
    name: ClassVar[str] = "discrete"
    t_min: ClassVar[float] = 0.0
    t_max: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in KEEP_SCHEDULES:
            raise unknown_name(f"{self.name} keep schedule", self.schedule, KEEP_SCHEDULES)
        if int(self.vocab_size) != self.vocab_size or self.vocab_size < 2:
            raise DistillError(f"{self.name} process: vocab_size must be an integer >= 2, got {self.vocab_size}")

    @property
    def input_vocab_size(self) -> int:
        """Vocabulary the network reads (the masked process adds the mask token)."""
        return self.vocab_size

    def alpha(self, t: Tensor | float) -> Tensor:
        """Keep probability: 1 - t (linear, MDLM) or cos(pi t / 2) (cosine, MaskGIT / MDLM)."""
        t = torch.as_tensor(t)
        t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
        return 1 - t if self.schedule == "linear" else torch.cos(t * (math.pi / 2))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        """d alpha / dt in closed form: -1 (linear) or -(pi / 2) sin(pi t / 2) (cosine)."""
        t = torch.as_tensor(t)
        t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
        return -torch.ones_like(t) if self.schedule == "linear" else -(math.pi / 2) * torch.sin(t * (math.pi / 2))

    def t_at_alpha(self, a: Tensor | float) -> Tensor:
        """The time whose keep probability is ``a`` (the inverse of :meth:`alpha` on [0, 1])."""
        a = torch.as_tensor(a)
        a = (a if a.is_floating_point() else a.to(torch.get_default_dtype())).clamp(0, 1)
        return 1 - a if self.schedule == "linear" else torch.arccos(a) * (2 / math.pi)

    def _keep(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None) -> Tensor:
        a = _col(self.alpha(t), x0.ndim).to(x0.device)
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64) < a

    def _probs(self, x0_probs: Tensor) -> Tensor:
        if x0_probs.shape[-1] != self.vocab_size:
            raise DistillError(
                f"{self.name} posterior: x0_probs has {x0_probs.shape[-1]} classes, expected vocab_size={self.vocab_size}"
                " (drop the mask token's column)"
            )
        p = x0_probs.to(torch.float64)
        return p / p.sum(-1, keepdim=True)

    def corrupt(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x0) per token; x0 Long[B, L], t [B] or scalar."""
        raise NotImplementedError

    def posterior(self, x_t: Tensor, x0_probs: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor:
        """Probabilities of x_s given x_t and the model's x0 distribution, [B, L, input_vocab_size]."""
        raise NotImplementedError

    def prior(self, shape: Sequence[int], generator: torch.Generator | None = None, device: Any = None) -> Tensor:
        """x_T at t = 1."""
        raise NotImplementedError

    def step(
        self,
        x_t: Tensor,
        x0_probs: Tensor,
        t: Tensor | float,
        s: Tensor | float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Ancestral sample x_s ~ posterior(x_t, x0_probs, t, s) (inverse CDF in float64)."""
        probs = self.posterior(x_t, x0_probs.to(torch.float64), t, s)
        return inverse_cdf(probs, torch.rand((*x_t.shape, 1), generator=generator, device=x_t.device, dtype=torch.float64))

    def prior_from_noise(self, noise: Tensor) -> Tensor:
        """x_T at t = 1 as a deterministic function of standard-normal ``noise`` [B, L].

        The core draws one standard-normal tensor per evaluation (the same for the teacher and
        every student, :func:`distill.evaluation.noise_and_cond`); a discrete model starts from
        the prior draw this maps it to, so "the same noise" keeps its meaning for tokens.
        """
        raise NotImplementedError

    def x0_log_probs(self, logits: Tensor, x_t: Tensor) -> Tensor:
        """log p(x0 | x_t) [B, L, vocab_size] in float32 from a network's ``logits`` over the
        data vocabulary (the canonical x0 of a discrete Denoiser is its exp)."""
        return torch.log_softmax(self._check_logits(logits).float(), dim=-1)

    def _check_logits(self, logits: Tensor) -> Tensor:
        if logits.shape[-1] != self.vocab_size:
            raise DistillError(
                f"{self.name} process: the network returned {logits.shape[-1]} logits per token, expected "
                f"vocab_size={self.vocab_size} (one per data token, none for the mask); rebuild the network "
                f"with vocab_size={self.vocab_size}"
            )
        return logits

    def describe(self) -> dict[str, Any]:
        """JSON-able record: ``make_process(**p.describe())`` rebuilds ``p``."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class MaskedProcess(DiscreteProcess):
    """Absorbing-state (masked) diffusion, MDLM (Sahoo et al. 2024); D3PM absorbing (Austin et al. 2021).

    The mask token is ``mask_id = vocab_size``, so the network reads ``vocab_size + 1`` tokens.
    Posterior for s < t (MDLM, Sahoo et al. 2024): an unmasked x_t is carried over; a masked x_t gives

        q(x_s | x_t = m) = (1 - a_s)/(1 - a_t) onehot(m) + (a_s - a_t)/(1 - a_t) p(x0).
    """

    name: ClassVar[str] = "masked"

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def input_vocab_size(self) -> int:
        return self.vocab_size + 1

    def corrupt(self, x0, t, generator=None):
        return torch.where(self._keep(x0, t, generator), x0, torch.full_like(x0, self.mask_id))

    def posterior(self, x_t, x0_probs, t, s):
        p = self._probs(x0_probs)
        a_t = _col(self.alpha(t), 3).to(p.device)
        a_s = _col(self.alpha(s), 3).to(p.device)
        denom = (1 - a_t).clamp_min(torch.finfo(torch.float64).tiny)
        to_mask = ((1 - a_s) / denom).expand(*p.shape[:-1], 1)
        unmask = torch.cat([(a_s - a_t) / denom * p, to_mask], dim=-1)
        carry = one_hot(x_t, self.vocab_size + 1).to(torch.float64)
        return torch.where((x_t == self.mask_id).unsqueeze(-1), unmask, carry).to(x0_probs.dtype)

    def prior(self, shape, generator=None, device=None):
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)

    def prior_from_noise(self, noise):
        return torch.full(tuple(noise.shape), self.mask_id, dtype=torch.long, device=noise.device)

    def x0_log_probs(self, logits, x_t):
        """MDLM's SUBS parameterisation (Sahoo et al. 2024, sec. 3.2.3): the mask gets zero
        probability (the network has no mask logit at all) and an unmasked x_t is carried over,
        log p(x0 = x_t | x_t) = 0, because the absorbing process never changes a kept token."""
        logp = torch.log_softmax(self._check_logits(logits).float(), dim=-1)
        kept = (x_t != self.mask_id).unsqueeze(-1)
        if not bool(kept.any()):
            return logp
        carry = one_hot(x_t.clamp(max=self.vocab_size - 1), self.vocab_size).bool()
        carried = torch.zeros_like(logp).masked_fill(~carry, float("-inf"))
        return torch.where(kept, carried, logp)


@dataclass(frozen=True)
class UniformProcess(DiscreteProcess):
    """Uniform-noise discrete diffusion (Austin et al. 2021, D3PM uniform; Schiff et al. 2024, UDLM).

    With a_{t|s} = a_t / a_s and V = vocab_size, the posterior marginalised over p(x0):

        w(x0)   = p(x0) / q(x_t | x0),            q(x_t | x0) = a_t [x0 = x_t] + (1 - a_t)/V
        p(x_s)  = q(x_t | x_s) (a_s w(x_s) + (1 - a_s)/V sum(w)),
        q(x_t | x_s) = a_{t|s} [x_s = x_t] + (1 - a_{t|s})/V.
    """

    name: ClassVar[str] = "uniform"

    def corrupt(self, x0, t, generator=None):
        noise = torch.randint(self.vocab_size, x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return torch.where(self._keep(x0, t, generator), x0, noise)

    def posterior(self, x_t, x0_probs, t, s):
        p, V = self._probs(x0_probs), self.vocab_size
        a_t = _col(self.alpha(t), 3).to(p.device)
        a_s = _col(self.alpha(s), 3).to(p.device)
        hit = one_hot(x_t, V).to(torch.float64)
        w = p / (a_t * hit + (1 - a_t) / V)
        a_ts = a_t / a_s
        return ((a_ts * hit + (1 - a_ts) / V) * (a_s * w + (1 - a_s) / V * w.sum(-1, keepdim=True))).to(x0_probs.dtype)

    def prior(self, shape, generator=None, device=None):
        return torch.randint(self.vocab_size, tuple(shape), generator=generator, device=device)

    def prior_from_noise(self, noise):
        """Uniform tokens floor(V Phi(noise)): Phi(z) of a standard normal z is uniform on (0, 1)."""
        u = 0.5 * torch.erfc(-noise.to(torch.float64) / math.sqrt(2.0))
        return (u * self.vocab_size).long().clamp(0, self.vocab_size - 1)


DISCRETE_PROCESSES: dict[str, type[DiscreteProcess]] = {c.name: c for c in (MaskedProcess, UniformProcess)}
