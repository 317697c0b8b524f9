"""Train a masked (or uniform) discrete diffusion teacher from token data (``mdlm``), and the
helpers every discrete method shares.

Not a distillation method: it makes the token teachers (``distill train
configs/tokens/arithmetic_teacher.yaml``) through the same engine and exports, so the result
loads as a teacher with ``teacher: {loader: safetensors, path: .../student_ema.safetensors}``.

Masked process, MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language
Models"), sec. 3: with the SUBS parameterisation (zero mask probability, carry-over unmasking;
:meth:`distill.process.MaskedProcess.x0_log_probs`) the continuous-time negative ELBO is
(their eq. 10-11)

    L_NELBO = E_{t ~ U[0, 1]} E_{z_t ~ q(. | x)} [ alpha'_t / (1 - alpha_t)
                                                  sum_{l : z_t^l = m} log <x_theta(z_t, t)^l, x^l> ],

a weighted cross-entropy on the masked positions (alpha' < 0, so the weight -alpha'/(1 - alpha)
is positive: 1/t for the linear schedule). We report it per token (divided by L) and draw t
with MDLM's low-discrepancy sampler (t_i = (u + i/n) mod 1 over the global batch), clipped to
[t_eps, 1] because the weight diverges at t = 0. ``weighting=uniform`` trains on the plain
cross-entropy of the masked tokens instead (MaskGIT, Chang et al. 2022): both are minimised by
the true p(x0 | z_t) at every t, and the unweighted one does not let the rare, hugely weighted
small-t draws dominate (and, after gradient clipping, shrink) the gradient of a small batch.

Uniform process: the x0 cross-entropy on every position, E_t CE(x, x_theta(z_t, t)), a
surrogate (the UDLM bound of Schiff et al. 2024 weighs the terms differently); the ancestral
sampler of the uniform posterior uses the prediction all the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, ModelSpec, Role, Roles
from distill.process import DiscreteProcess, MaskedProcess, make_process, sampling_schedule
from distill.samplers import SampleResult, ancestral

DISCRETE_PROCESS_NAMES = ("masked", "uniform")
WEIGHTINGS = ("elbo", "uniform", "sequence")


def modality_vocab_size(modality: Any, method: str) -> int:
    """The data vocabulary of a discrete modality (its ``vocab_size``), or an error that says so."""
    vocab = getattr(modality, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 2:
        raise DistillError(
            f"method {method!r} needs a discrete modality that declares its vocabulary as an integer "
            f"`vocab_size` >= 2; {type(modality).__name__} has vocab_size={vocab!r}"
        )
    return vocab


def discrete_process(process: Any, method: str) -> DiscreteProcess:
    if not isinstance(process, DiscreteProcess):
        raise DistillError(
            f"method {method!r} runs on token models (masked or uniform process); the teacher's process is "
            f"{getattr(process, 'name', type(process).__name__)!r}"
        )
    return process


def low_discrepancy_times(batch: Batch, t_eps: float = 1e-3) -> torch.Tensor:
    """MDLM's stratified times: t_i = (u + i / n) mod 1 over the global batch (n = size * world),
    one u per step, mapped to [t_eps, 1]; this rank's slice. Lower variance than iid draws."""
    n = batch.size * batch.world
    u = torch.rand(1, generator=batch.generator, dtype=torch.float64)
    t = torch.remainder(u + torch.arange(n, dtype=torch.float64) / n, 1.0)
    t = t_eps + (1 - t_eps) * t
    return t[batch.rank * batch.size : (batch.rank + 1) * batch.size].float().to(batch.device)


def token_times(process: DiscreteProcess, steps: int) -> torch.Tensor:
    """The uniform grid 1 = t_0 > ... > t_steps = 0 of a ``steps``-step token sampler."""
    return sampling_schedule(process, steps)


def sample_tokens(student: Denoiser, noise: torch.Tensor, cond: Any, timesteps: torch.Tensor,
                  generator: torch.Generator | None) -> SampleResult:
    """Ancestral sampling of a token Denoiser from the prior draw of ``noise`` (the one a teacher
    with the same noise starts from)."""
    x_T = discrete_process(student.process, "ancestral sampling").prior_from_noise(noise)
    return ancestral(student, x_T, cond, timesteps=timesteps, generator=generator)


class MDLM(Method):
    name = "mdlm"
    description = "train a masked (MDLM, SUBS) or uniform discrete diffusion teacher from token data"
    paper = "arXiv:2406.07524"
    kinds = frozenset({"discrete"})
    needs_data = True
    needs_teacher = False

    @dataclass
    class Options:
        process: str = "masked"  # masked | uniform
        schedule: str = "linear"  # keep probability alpha(t): linear (1 - t) | cosine
        lr: float = 1e-3
        t_eps: float = 1e-3  # smallest training time (the NELBO weight is 1/t at t -> 0)
        # elbo: the NELBO weight -alpha'/(1 - alpha) (MDLM); uniform: the plain cross-entropy of the
        # masked tokens (MaskGIT's loss); sequence: the cross-entropy averaged within each sequence,
        # then over sequences (1/#masked for the NELBO's 1/(L t)). All share the minimiser p(x0 | z_t).
        weighting: str = "elbo"
        # t = u^time_power for low-discrepancy u: > 1 puts more draws at small t, where most of the
        # sequence is visible and the dependencies between positions are learnable (any density with
        # full support keeps p(x0 | z_t) the minimiser at every t; with weighting=elbo the NELBO then
        # becomes importance-weighted by 1 / density)
        time_power: float = 1.0
        sampler_steps: int = 64  # ancestral steps when the trained model is sampled as a teacher

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.process not in DISCRETE_PROCESS_NAMES:
            raise DistillError(f"mdlm: process must be one of {', '.join(DISCRETE_PROCESS_NAMES)}; got {o.process!r}")
        if o.weighting not in WEIGHTINGS:
            raise DistillError(f"mdlm: weighting must be one of {', '.join(WEIGHTINGS)}; got {o.weighting!r}")
        if o.time_power <= 0:
            raise DistillError(f"mdlm: time_power must be positive; got {o.time_power}")
        if not 0 < o.t_eps < 1:
            raise DistillError(f"mdlm: t_eps must lie in (0, 1); got {o.t_eps}")
        self.vocab_size: int | None = None

    def bind(self, modality: Any) -> None:
        self.vocab_size = modality_vocab_size(modality, self.name)

    def roles(self) -> list[Role]:
        return [Role("student", init="fresh", lr=self.options.lr)]

    def model_spec(self) -> ModelSpec:
        if self.vocab_size is None:
            raise DistillError("mdlm: model_spec() before bind(modality); the engine binds the modality first")
        process = make_process(self.options.process, vocab_size=self.vocab_size, schedule=self.options.schedule)
        return ModelSpec(process, "logits", "t")

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        model = roles.student
        p = discrete_process(model.process, self.name)
        x0 = batch.x0
        t = low_discrepancy_times(batch, self.options.t_eps)
        power = self.options.time_power
        density = None
        if power != 1.0:  # t = u^p has density t^(1/p - 1) / p on (0, 1]
            t = t.pow(power).clamp_min(self.options.t_eps)
            density = t.double().pow(1.0 / power - 1.0) / power
        x_t = p.corrupt(x0.cpu(), t.cpu(), generator=batch.generator).to(x0.device)
        logp = model.predict(x_t, t, batch.cond, target="logits")  # [B, L, V]
        # log p(x0 | x_t) of the data token; carried-over positions give exactly 0 under SUBS.
        picked = logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        if isinstance(p, MaskedProcess):
            corrupted = x_t == p.mask_id
            a, da = p.alpha(t.double()), p.d_alpha(t.double())
            weight = -da / (1 - a)  # -alpha'/(1 - alpha) > 0
            if density is not None:  # importance weight of the non-uniform time draw
                weight = weight / density
            weight = weight.float().unsqueeze(-1)
            nll = -(torch.where(corrupted, picked, torch.zeros_like(picked)) * weight).mean()
            ce = -(torch.where(corrupted, picked, torch.zeros_like(picked))).sum() / corrupted.sum().clamp_min(1)
            # sequence: each sequence's masked-token cross-entropy averaged over its own masked tokens,
            # then over the batch: 1/(#masked) in place of the NELBO's 1/(L t), its empirical value
            per_seq = -(torch.where(corrupted, picked, torch.zeros_like(picked))).sum(-1) / corrupted.sum(-1).clamp_min(1)
            total = {"elbo": nll, "uniform": ce, "sequence": per_seq.mean()}[self.options.weighting]
            return Losses(total=total, terms={"nelbo_per_token": nll.detach(), "ce_masked": ce.detach()})
        ce = -picked.mean()
        return Losses(total=ce, terms={"ce": ce})

    def student_timesteps(self, steps: int) -> torch.Tensor:
        return token_times(self.process, steps)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        steps = self.options.sampler_steps
        return {"name": "ancestral", "steps": steps, "timesteps": [float(t) for t in self.student_timesteps(steps)]}

    def sample(self, student: Denoiser, noise: torch.Tensor, cond: Any = None, steps: int = 64,
               generator: torch.Generator | None = None) -> SampleResult:
        """The trained model is a teacher: ancestral sampling with ``steps`` steps."""
        return sample_tokens(student, noise, cond, token_times(student.process, steps), generator)
