"""What the adversarial distillation methods ``add`` and ``ladd`` share.

Sauer et al. 2023, "Adversarial Diffusion Distillation" (ADD, arXiv:2311.17042) and
Sauer et al. 2024, "Fast High-Resolution Image Synthesis with Latent Adversarial
Diffusion Distillation" (LADD, arXiv:2403.12015).

**Student.** At one of its sampling times ``s`` (the ``student.steps``-step schedule,
``t_max`` first) the student denoises a noised "real" sample in one call (ADD sec. 3.1):

    x_s = alpha_s x0 + sigma_s eps,     x_hat = G_theta(x_s, s)

with ``x_s = sigma(t_max) eps`` at ``s = t_max``: exactly the noise the sampler starts from
(ADD trains its top step at zero terminal SNR for the same reason). ``x0`` is real data (ADD,
``ladd`` with ``real: data``) or the teacher's own ODE samples (``ladd`` with ``real: teacher``).
A ``k``-step student is then sampled by the multistep sampler on the same times (denoise,
re-noise with fresh noise, denoise again), so the uniform schedules nest: a 4-step student also
samples at 2 and 1 steps. The heads of a multistep student's discriminator also read which
step made each sample (a learned embedding, :class:`distill.methods.heads.MultiLayerHead`):
without it only the mixture of all steps' outputs is matched to the data, and one step's
excess of a mode can hide another's lack of it (measured on the toy: a 4-step student whose
1-step samples were within 2x of the teacher's sliced Wasserstein had 4-step samples several
times worse). This conditioning is ours; ADD and LADD start the student from the teacher, whose
later steps are good denoisers from the start.

**Discriminator.** Trainable heads ``D_k`` (:class:`distill.methods.heads.MultiLayerHead`, one
per layer) read features ``F_k`` of a feature network at ``(x_t, t, cond)``. With
``features: teacher`` it is the frozen teacher itself (LADD sec. 3.1: the teacher's own
features; ADD uses a frozen DINOv2); gradients flow through it to the student's sample but its
weights never change (the engine freezes it). With ``features: critic`` a fresh reference
network of the modality, trained with the heads, supplies them (for teachers without
``feature_layers``, such as the toy's exact mixture). Real and generated samples are noised to the
same times ``t ~ pi(t)`` before the features are taken: lightly (ADD: the discriminator sees
clean images) or biased to high noise (LADD sec. 3.2: a logit-normal ``pi``). Losses, per head,
then summed (ADD eq. 2-3) or averaged over the heads:

    hinge:           L_D = E[max(0, 1 - D_k(real))] + E[max(0, 1 + D_k(fake))],  L_G = -E[D_k(fake)]
    non_saturating:  L_D = E[softplus(-D_k(real))] + E[softplus(D_k(fake))],     L_G = E[softplus(-D_k(fake))]

plus ``r1_weight * E ||grad_x sum_k D_k(F_k(x))||^2`` at the real inputs (R1, Mescheder et al.
2018, "Which Training Methods for GANs do actually Converge?", eq. 9; ADD eq. 3 with gamma = 1e-5),
optionally only every ``r1_every``-th step at ``r1_every`` times the weight (lazy regularisation,
Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", sec. 3.1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import UNIT_TIMES, Batch, Losses, Method, Role, Roles
from distill.methods.heads import HEADS, MultiLayerHead, head_spatial_dims, pick_feature_layers

LOSSES = ("hinge", "non_saturating")
FEATURES = ("teacher", "critic")
REDUCTIONS = ("sum", "mean")


# --- pure losses: logits are [K heads, B samples] ------------------------------------------------
def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-head generator loss ``[K]``: ``-E[D_k]`` (hinge, ADD eq. 2) or ``E[softplus(-D_k)]``
    (non-saturating, Goodfellow et al. 2014, sec. 3)."""
    if kind == "hinge":
        return -fake_logits.mean(dim=-1)
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean(dim=-1)
    raise DistillError(f"unknown adversarial loss {kind!r}; use one of {', '.join(LOSSES)}")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-head discriminator loss ``[K]`` (ADD eq. 3 without R1 for ``hinge``)."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean(dim=-1) + F.relu(1 + fake_logits).mean(dim=-1)
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean(dim=-1) + F.softplus(fake_logits).mean(dim=-1)
    raise DistillError(f"unknown adversarial loss {kind!r}; use one of {', '.join(LOSSES)}")


def reduce_heads(values: torch.Tensor, how: str) -> torch.Tensor:
    """Combine per-head values over dim 0: ``sum`` (ADD eq. 2-3) or ``mean`` (a rate that does
    not grow with the number of heads)."""
    if how == "sum":
        return values.sum(dim=0)
    if how == "mean":
        return values.mean(dim=0)
    raise DistillError(f"unknown head_reduce {how!r}; use one of {', '.join(REDUCTIONS)}")


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``E_x ||grad_x logits(x)||^2`` (R1, Mescheder et al. 2018, eq. 9, without gamma/2) for logits
    ``[B]`` computed from ``inputs`` ``[B, ...]`` (which must require grad); keeps the graph so
    the penalty trains the discriminator."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


def _check_choice(label: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DistillError(f"{label}: {key} must be one of {', '.join(choices)}; got {value!r}")


class AdversarialDistillation(Method):
    """Base of ``add`` and ``ladd`` (see the module docstring). Subclasses give ``_real`` (the
    real samples and their conditioning) and may add student terms with ``_student_terms``."""

    kinds = frozenset({"continuous"})

    @dataclass
    class Options:
        student_lr: float = 1.0e-4
        discriminator_lr: float = 1.0e-4  # the heads
        critic_lr: float = 1.0e-4  # the fresh feature network (features=critic)
        discriminator_updates: int = 1  # discriminator phases per student phase
        loss: str = "hinge"  # hinge (ADD, LADD) | non_saturating
        adversarial_weight: float = 1.0  # weight of the generator's adversarial term
        r1_weight: float = 0.0  # gamma of the R1 penalty on real inputs (ADD: 1e-5)
        r1_every: int = 1  # lazy R1: every k-th step, weighted k times (StyleGAN2 sec. 3.1)
        features: str = "teacher"  # teacher (frozen, LADD) | critic (fresh, trained with the heads)
        head: str = "pooled"  # pooled | conv: 3x3 convolutions before the pool (distill.methods.heads)
        critic_network: dict[str, Any] | None = None  # the fresh critic's network overrides (e.g. hidden: 128)
        feature_layers: list[str] | None = None  # layers with a head (None: every feature layer)
        head_reduce: str = "sum"  # per-head losses summed (ADD eq. 2-3) or averaged
        disc_time: str = "uniform"  # pi(t) of the discriminator's noise: uniform | logit_normal
        disc_t_lo: float = 0.0  # pi's range, as fractions of [t_min, t_max]
        disc_t_hi: float = 1.0
        disc_t_mean: float = 0.0  # logit-normal location and scale (LADD: 1, 1: biased to noise)
        disc_t_std: float = 1.0
        first_step_weight: float | None = None  # share of samples on the first (pure-noise) step; None: steps alike

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o, label = self.options, self.name
        _check_choice(label, "loss", o.loss, LOSSES)
        _check_choice(label, "features", o.features, FEATURES)
        _check_choice(label, "head", o.head, HEADS)
        _check_choice(label, "disc_time", o.disc_time, UNIT_TIMES)
        _check_choice(label, "head_reduce", o.head_reduce, REDUCTIONS)
        if o.discriminator_updates < 1:
            raise DistillError(f"{label}: discriminator_updates must be at least 1; got {o.discriminator_updates}")
        if o.r1_every < 1:
            raise DistillError(f"{label}: r1_every must be at least 1 (1: R1 at every step); got {o.r1_every}")
        if o.adversarial_weight < 0 or o.r1_weight < 0:
            raise DistillError(f"{label}: adversarial_weight and r1_weight must be >= 0; got "
                               f"{o.adversarial_weight} and {o.r1_weight}")
        if not 0.0 <= o.disc_t_lo <= o.disc_t_hi <= 1.0:
            raise DistillError(f"{label}: need 0 <= disc_t_lo <= disc_t_hi <= 1 (fractions of the process's time "
                               f"range); got {o.disc_t_lo} and {o.disc_t_hi}")
        if o.critic_network and o.features != "critic":
            raise DistillError(f"{label}: critic_network sizes the fresh critic of features=critic; "
                               f"with features={o.features} there is none (unset it)")
        if o.disc_t_std <= 0:
            raise DistillError(f"{label}: disc_t_std must be > 0; got {o.disc_t_std}")
        if o.first_step_weight is not None and not 0.0 <= o.first_step_weight <= 1.0:
            raise DistillError(f"{label}: first_step_weight must lie in [0, 1] (or be unset); got {o.first_step_weight}")
        self.student_steps = 1
        self.layers: list[str] = []

    # --- roles and phases ------------------------------------------------------
    def roles(self) -> list[Role]:
        # Adam without first-moment momentum for both players, the GAN convention (Karras et al.
        # 2020, StyleGAN2: beta1 = 0, beta2 = 0.99): momentum carries each player past the other's
        # moving optimum and makes the game oscillate (on the toy, after 1,000 steps two thirds of the
        # student's samples lay between the modes with beta1 = 0.9, a tenth with beta1 = 0).
        # optim.<role>.betas overrides.
        o, betas = self.options, (0.0, 0.99)
        roles = [Role("student", lr=o.student_lr, betas=betas)]
        if o.features == "critic":
            roles.append(Role("critic", init="method", lr=o.critic_lr, betas=betas))
        roles.append(Role("discriminator", init="method", denoiser=False, lr=o.discriminator_lr, betas=betas))
        return roles

    def phases(self, step: int) -> list[str]:
        return ["discriminator"] * self.options.discriminator_updates + ["student"]

    def phase_roles(self, phase: str) -> list[str]:
        if phase == "discriminator" and self.options.features == "critic":
            return ["critic", "discriminator"]
        return [phase]

    def _feature_net(self, roles: Roles) -> Denoiser:
        return roles.teacher if self.options.features == "teacher" else roles.critic

    def _pick_layers(self, roles: Roles) -> dict[str, int]:
        hint = ("set method_args.features=critic to train a fresh feature network with the heads "
                "(a teacher without a network, such as the toy's exact mixture, needs this), or use a "
                "teacher built from distill.nets")
        return pick_feature_layers(self._feature_net(roles).net, self.options.feature_layers, hint)

    @property
    def _step_labels(self) -> int:
        """How many step labels the heads read: one per step of a multistep student, else none."""
        return self.student_steps if self.student_steps > 1 else 0

    def build_role(self, role: Role, roles: Roles, modality) -> torch.nn.Module:
        if role.name == "critic":
            # the modality's reference network, fresh, read like the teacher (process, time input);
            # its own size: a discriminator backbone may be smaller than the student
            teacher = roles.teacher
            net = modality.build_network("critic", **dict(self.options.critic_network or {}))
            return Denoiser(net, teacher.process, prediction=teacher.prediction, time_input=teacher.time_input)
        layers = self._pick_layers(roles)
        self.layers = list(layers)
        kind = self.options.head
        return MultiLayerHead(layers, labels=self._step_labels, kind=kind, spatial_dims=head_spatial_dims(kind, modality))

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        self.layers = list(self._pick_layers(roles))
        head_layers = getattr(roles.discriminator, "layers", None)
        if head_layers is not None and list(head_layers) != self.layers:
            raise DistillError(f"{self.name}: the discriminator's heads read {head_layers}, but the feature layers "
                               f"are {self.layers}; rebuild the run with the same feature_layers")
        labels = getattr(roles.discriminator, "labels", self._step_labels)
        if labels != self._step_labels:
            raise DistillError(f"{self.name}: the discriminator's heads read {labels} step labels, but a "
                               f"{self.student_steps}-step student needs {self._step_labels}; rebuild the run")

    # --- pieces ------------------------------------------------------------------
    def _real(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        """The batch's "real" samples and their conditioning (subclasses)."""
        raise NotImplementedError

    def _student_times(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: the index ``k`` into the student's times (``t_max`` first) and ``s = t_k``.

        One time (a one-step student) draws nothing; several draw ``k`` uniformly, or with
        ``first_step_weight`` set, ``k = 0`` with that probability and the others alike (so that
        the hardest step, from pure noise, can get more of the batch): one uniform draw ``u`` per sample, ``k = 0`` for ``u < w``, else
        ``1 + floor((u - w) / (1 - w) * (K - 1))``.
        """
        times = self.student_timesteps(self.student_steps)[:-1]  # t_min stands for the data end
        n, device, k = batch.size, batch.device, len(times)
        w = self.options.first_step_weight
        if k == 1:
            index = torch.zeros(n, dtype=torch.long, device=device)
        elif w is None:
            index = batch.randint(k, n, device)
        else:
            u = batch.rand(n, device).double()
            rest = 1 + ((u - w) / max(1.0 - w, 1e-12) * (k - 1)).floor().clamp(0, k - 2).long()
            index = torch.where(u < w, torch.zeros_like(rest), rest)
        s = times.to(device)[index].to(batch.noise.dtype)
        return index, s

    def _student_input(self, x0: torch.Tensor, noise: torch.Tensor, index: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``x_s = alpha_s x0 + sigma_s noise``, and ``sigma(t_max) noise`` at the first time (the sampler's start)."""
        p = self.process
        start = noise * p.sigma(torch.tensor(p.t_max, dtype=torch.float64)).to(noise.dtype)
        if bool((index == 0).all()):
            return start
        top = (index == 0).view(-1, *([1] * (noise.ndim - 1)))
        return torch.where(top, start, p.add_noise(x0, noise, s))

    def generate(self, batch: Batch, roles: Roles, x0: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's x0 from its noised input (grad mode as the caller's): the batch's noise
        noises ``x0`` at the student's times (ADD sec. 3.1). Also returns each sample's step
        index as the heads' label (None for a one-step student)."""
        index, s = self._student_times(batch)
        x_hat = roles.student.predict(self._student_input(x0, batch.noise, index, s), s, cond)
        return x_hat, (index if self._step_labels else None)

    def _disc_times(self, batch: Batch) -> torch.Tensor:
        """``t ~ pi``: uniform or logit-normal (LADD sec. 3.2) on ``[disc_t_lo, disc_t_hi]`` of the range."""
        o, p = self.options, self.process
        u = batch.unit_times(batch.size, o.disc_time, o.disc_t_mean, o.disc_t_std)
        frac = o.disc_t_lo + (o.disc_t_hi - o.disc_t_lo) * u
        return (p.t_min + frac * (p.t_max - p.t_min)).to(batch.noise.dtype)

    def _noised(self, x0: torch.Tensor, batch: Batch, t: torch.Tensor) -> torch.Tensor:
        return self.process.add_noise(x0, batch.randn_like(x0), t)

    def _logits(self, roles: Roles, x_t: torch.Tensor, t: torch.Tensor, cond: Any,
                label: torch.Tensor | None = None) -> torch.Tensor:
        """Head logits ``[K, B]`` on the feature network's layers at ``(x_t, t, cond)``; ``label``:
        the student step that made each sample (multistep students), read by the heads only."""
        net = self._feature_net(roles)
        with net.tap(*self.layers) as features:
            net.raw(x_t, t, cond)
        return roles.discriminator(features) if label is None else roles.discriminator(features, label)

    def _paired_logits(self, roles: Roles, fake_t: torch.Tensor, real_t: torch.Tensor, t: torch.Tensor, cond: Any,
                       label: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of generated and real samples at the same times (and step labels: each real
        sample shares its generated partner's, so every step's heads see real and generated
        samples alike): one call on both halves when the conditioning is a tensor or None (every
        feature network here is per-sample), else two."""
        n = fake_t.shape[0]
        if cond is None or isinstance(cond, torch.Tensor):
            both_cond = None if cond is None else torch.cat([cond, cond])
            both_label = None if label is None else torch.cat([label, label])
            logits = self._logits(roles, torch.cat([fake_t, real_t]), torch.cat([t, t]), both_cond, both_label)
            return logits[:, :n], logits[:, n:]
        return self._logits(roles, fake_t, t, cond, label), self._logits(roles, real_t, t, cond, label)

    def _student_terms(self, x_hat: torch.Tensor, cond: Any, batch: Batch, roles: Roles
                       ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Extra student loss on the generated ``x_hat`` (ADD's distillation term); none here."""
        return None, {}

    # --- losses ----------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        if phase == "discriminator":
            return self._discriminator_loss(batch, roles)
        if phase == "student":
            return self._student_loss(batch, roles)
        raise DistillError(f"{self.name} has phases 'discriminator' and 'student', not {phase!r}")

    def _student_loss(self, batch: Batch, roles: Roles) -> Losses:
        """Draw order: real samples, student times, discriminator times, noise; then the subclass's."""
        o = self.options
        x0, cond = self._real(batch)
        x_hat, label = self.generate(batch, roles, x0, cond)
        t = self._disc_times(batch)
        logits = self._logits(roles, self._noised(x_hat, batch, t), t, cond, label)
        adversarial = reduce_heads(generator_loss(logits, o.loss), o.head_reduce)
        total = o.adversarial_weight * adversarial
        terms = {"adversarial": adversarial}
        extra, extra_terms = self._student_terms(x_hat, cond, batch, roles)
        if extra is not None:
            total = total + extra
        terms.update(extra_terms)
        return Losses(total=total, terms=terms)

    def _discriminator_loss(self, batch: Batch, roles: Roles) -> Losses:
        """Draw order: real samples, student times, discriminator times, fake noise, real noise."""
        o = self.options
        # lazy regularisation (Karras et al. 2020, StyleGAN2, sec. 3.1): the penalty's double
        # backward costs about as much as the rest of the phase, and every k-th step at k times
        # the weight gives the discriminator the same regularisation on average
        with_r1 = o.r1_weight > 0 and batch.step % o.r1_every == 0
        x0, cond = self._real(batch)
        with torch.no_grad():
            x_hat, label = self.generate(batch, roles, x0, cond)
        t = self._disc_times(batch)
        fake_t = self._noised(x_hat, batch, t)
        real_t = self._noised(x0, batch, t)
        if with_r1:
            real_t = real_t.detach().requires_grad_(True)
        fake_logits, real_logits = self._paired_logits(roles, fake_t, real_t, t, cond, label)
        disc = reduce_heads(discriminator_loss(real_logits, fake_logits, o.loss), o.head_reduce)
        terms = {"discriminator": disc, "real_logit": real_logits.mean().detach(),
                 "fake_logit": fake_logits.mean().detach()}
        total = disc
        if with_r1:
            r1 = r1_penalty(reduce_heads(real_logits, o.head_reduce), real_t)
            terms["r1"] = r1
            total = total + o.r1_every * o.r1_weight * r1
        return Losses(total=total, terms=terms)
