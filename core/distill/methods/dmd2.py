"""Improved distribution matching distillation (``dmd2``).

Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image
Synthesis" (DMD2, arXiv:2405.14867), building on Yin et al. 2024, "One-step
Diffusion with Distribution Matching Distillation" (DMD, arXiv:2311.18828).

The student G maps noise to samples. Its gradient is the difference between two
scores at noised student samples ``x_t = alpha_t G(z) + sigma_t eps``: the teacher
("real" score) and a critic trained online to denoise the student's own samples
("fake" score). In x0 form (DMD eq. 7-8, with the per-sample normaliser of eq. 8):

    grad = (x0_fake(x_t, t) - x0_real(x_t, t)) / mean_d |G(z) - x0_real(x_t, t)|
    L_G  = 1/2 || G(z) - stopgrad(G(z) - grad) ||^2                    (gradient = grad)

The critic minimises the denoising loss on student samples in its native
prediction space (DMD2 sec. 4.2). DMD2 drops the regression loss of DMD and
stabilises with a two-time-scale update rule (``critic_updates`` critic steps per
student step, sec. 4.2), an optional GAN term whose discriminator is a head on the
critic's features of noised real and generated samples (sec. 4.3, non-saturating
loss), and backward simulation for multistep students: the student input at step
k is produced by running the student itself from noise (sec. 4.4). Classifier-free
guidance, when set, applies to the real score only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.method import UNIT_TIMES, Batch, Losses, Method, Role, Roles
from distill.methods.heads import HEADS, head_spatial_dims, make_head, pick_feature_layer


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 at the real inputs (Mescheder et al. 2018, "Which Training Methods
    for GANs do actually Converge?", eq. 9 without gamma/2): the discriminator's gradient at
    the data is pushed to zero, which damps the oscillation of a discriminator that wins.
    ``inputs`` must require grad; the graph is kept so the penalty trains the discriminator."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


class DMD2(Method):
    name = "dmd2"
    description = "distribution matching with an online critic, TTUR and optional GAN head (Yin et al. 2024)"
    paper = "arXiv:2405.14867"
    kinds = frozenset({"continuous"})
    critic_models_student = True

    @dataclass
    class Options:
        critic_updates: int = 2  # critic phases per student phase (two-time-scale update rule)
        # samples per critic phase (None: data.batch_size); more, smaller critic updates for the same
        # compute keep the critic closer to the student (docs/modalities/image.md: the demo's critic)
        critic_batch_size: int | None = None
        student_lr: float = 1e-4
        critic_lr: float = 1e-4
        critic_prediction: str | None = None  # fresh critic's prediction type (None: the teacher's)
        guidance: float | None = None  # CFG scale on the real (teacher) score
        t_lo: float = 0.02  # DMD's timestep range, as a fraction of [t_min, t_max]
        t_hi: float = 0.98
        # pi(t) of the matching loss and the critic inside [t_lo, t_hi]: uniform (DMD) or logit_normal
        # (t_mean < 0 spends more updates at low noise, where fine detail is decided; docs/methods/dmd2.md)
        t_dist: str = "uniform"
        t_mean: float = 0.0
        t_std: float = 1.0
        normalize: bool = True  # per-sample gradient normalisation (DMD eq. 8)
        backward_simulation: bool = True
        gan_weight: float = 0.0  # generator's GAN weight (DMD2: 3e-3); > 0 needs real data
        gan_critic_weight: float = 1.0  # discriminator loss weight in the critic phase
        gan_t_lo: float | None = None  # the GAN's own time range (None: t_lo, t_hi); real and generated
        gan_t_hi: float | None = None  # samples differ mostly at low noise (docs/methods/dmd2.md)
        feature_layer: str | None = None  # critic layer the head reads (None: its last feature layer)
        gan_head: str = "pooled"  # pooled | conv: 3x3 convolutions before the pool (distill.methods.heads)
        r1_weight: float = 0.0  # gamma of the R1 penalty gamma/2 E||grad_x D(x)||^2 at noised real samples (0: off)
        discriminator_lr: float | None = None  # None: critic_lr

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.critic_updates < 1:
            raise DistillError("dmd2: critic_updates must be at least 1")
        if o.critic_batch_size is not None and o.critic_batch_size < 1:
            raise DistillError(f"dmd2: critic_batch_size must be at least 1 (or null: data.batch_size), got {o.critic_batch_size}")
        if not 0.0 <= o.t_lo < o.t_hi <= 1.0:
            raise DistillError(f"dmd2: need 0 <= t_lo < t_hi <= 1, got t_lo={o.t_lo}, t_hi={o.t_hi}")
        if not 0.0 <= self._gan_range[0] < self._gan_range[1] <= 1.0:
            raise DistillError(f"dmd2: need 0 <= gan_t_lo < gan_t_hi <= 1, got {self._gan_range}")
        if o.t_dist not in UNIT_TIMES:
            raise DistillError(f"dmd2: t_dist must be one of {', '.join(UNIT_TIMES)}; got {o.t_dist!r}")
        if not o.t_std > 0:
            raise DistillError(f"dmd2: t_std must be > 0, got {o.t_std}")
        if o.r1_weight < 0:
            raise DistillError(f"dmd2: r1_weight must be >= 0 (0 turns the R1 penalty off), got {o.r1_weight}")
        if o.gan_head not in HEADS:
            raise DistillError(f"dmd2: gan_head must be one of {', '.join(HEADS)}; got {o.gan_head!r}")
        self.student_steps = 1

    @property
    def discriminates(self) -> bool:
        """Whether a discriminator head is trained on real vs generated samples: for the GAN
        term here, or for a subclass that reads its logits (``fdistill``'s density ratio)."""
        return self.options.gan_weight > 0

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.discriminates

    # --- roles and phases ------------------------------------------------------
    def roles(self) -> list[Role]:
        o = self.options
        roles = [Role("student", lr=o.student_lr), Role("critic", lr=o.critic_lr, prediction=o.critic_prediction)]
        if self.discriminates:
            roles.append(Role("discriminator", init="method", denoiser=False, lr=o.discriminator_lr or o.critic_lr))
        return roles

    def phases(self, step: int) -> list[str]:
        return ["critic"] * self.options.critic_updates + ["student"]

    def phase_batch_size(self, phase: str, batch_size: int) -> int:
        if phase == "critic" and self.options.critic_batch_size is not None:
            return self.options.critic_batch_size
        return batch_size

    def phase_roles(self, phase: str) -> list[str]:
        if phase == "critic" and self.discriminates:
            return ["critic", "discriminator"]
        return [phase]

    def build_role(self, role: Role, roles: Roles, modality) -> torch.nn.Module:
        layer, channels = pick_feature_layer(roles.critic.net, self.options.feature_layer)
        self.feature_layer = layer
        kind = self.options.gan_head
        return make_head(kind, channels, head_spatial_dims(kind, modality))

    def setup(self, roles: Roles, modality) -> None:
        super().setup(roles, modality)
        if self.discriminates:
            self.feature_layer, _ = pick_feature_layer(roles.critic.net, self.options.feature_layer)

    # --- pieces ------------------------------------------------------------------
    @property
    def _gan_range(self) -> tuple[float, float]:
        o = self.options
        return (o.t_lo if o.gan_t_lo is None else o.gan_t_lo, o.t_hi if o.gan_t_hi is None else o.gan_t_hi)

    def _times(self, batch: Batch, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
        """Times of the matching loss and the critic (``t_dist`` on ``[t_lo, t_hi]``), or, given a
        range, the GAN's own (uniform on it)."""
        o, p = self.options, self.process
        if lo is None:
            lo, hi = o.t_lo, o.t_hi
            draw = batch.unit_times(batch.size, o.t_dist, o.t_mean, o.t_std)
        else:
            draw = batch.rand(batch.size)
        u = lo + (hi - lo) * draw
        return p.t_min + u * (p.t_max - p.t_min)

    def _gan_times(self, batch: Batch, t: torch.Tensor) -> torch.Tensor:
        """The DM loss's times when the GAN shares its range (no extra draw), else fresh ones."""
        o = self.options
        if o.gan_t_lo is None and o.gan_t_hi is None:
            return t
        return self._times(batch, *self._gan_range)

    def _noised(self, x0: torch.Tensor, batch: Batch, t: torch.Tensor) -> torch.Tensor:
        return self.process.add_noise(x0, batch.randn_like(x0), t)

    def generate(self, batch: Batch, roles: Roles) -> torch.Tensor:
        """Student output with gradients; multistep students start from a backward-simulated x_{t_k}."""
        student, p = roles.student, self.process
        timesteps = self.student_timesteps(self.student_steps).to(batch.noise.dtype)
        x = batch.noise * p.sigma(timesteps[:1].double()).to(batch.noise.dtype)
        k = 0
        if self.student_steps > 1 and self.options.backward_simulation:
            k = int(batch.randint(self.student_steps, 1)[0])
            with torch.no_grad():
                for j in range(k):
                    t = timesteps[j].expand(batch.size).to(batch.device)
                    x0 = student.predict(x, t, batch.cond)
                    s = timesteps[j + 1].expand(batch.size).to(batch.device)
                    x = p.add_noise(x0, batch.randn_like(x0), s)
        t = timesteps[k].expand(batch.size).to(batch.device)
        return student.predict(x, t, batch.cond)

    def _real_x0(self, roles: Roles, x_t: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.options.guidance is not None:
            return roles.teacher.guided(x_t, t, batch.cond, batch.null_cond, self.options.guidance)
        return roles.teacher.predict(x_t, t, batch.cond)

    def _logits(self, roles: Roles, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        with roles.critic.tap(self.feature_layer) as features:
            roles.critic.raw(x_t, t, cond)
        return roles.discriminator(features[self.feature_layer])

    # --- losses ----------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        return self._critic_loss(batch, roles) if phase == "critic" else self._student_loss(batch, roles)

    def _student_loss(self, batch: Batch, roles: Roles) -> Losses:
        o = self.options
        x0 = self.generate(batch, roles)
        t = self._times(batch)
        total, terms = self._matching_loss(x0, t, batch, roles)
        if o.gan_weight > 0:
            t_gan = self._gan_times(batch, t)
            x_t = self._noised(x0, batch, t_gan)
            gan = F.softplus(-self._logits(roles, x_t, t_gan, batch.cond)).mean()
            terms["gan"] = gan
            total = total + o.gan_weight * gan
        return Losses(total=total, terms=terms)

    def _matching_loss(self, x0: torch.Tensor, t: torch.Tensor, batch: Batch, roles: Roles
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The distribution-matching term of the student loss at student samples ``x0`` (with
        gradients) noised to times ``t``: DMD's normalised score difference (eq. 7-8).
        Subclasses (``vsd``, ``sid``, ``fdistill``) replace this term and keep the rest."""
        with torch.no_grad():
            x_t = self._noised(x0.detach(), batch, t)
            real = self._real_x0(roles, x_t, t, batch)
            fake = roles.critic.predict(x_t, t, batch.cond)
            grad = self._score_difference(x0, fake, real, x_t, t, batch, roles)
        dm = 0.5 * F.mse_loss(x0, (x0 - grad).detach())
        return dm, {"dm": dm}

    def _score_difference(self, x0, fake, real, x_t, t, batch, roles) -> torch.Tensor:
        """``x0_fake - x0_real``, divided by DMD's per-sample normaliser when ``normalize``."""
        grad = fake - real
        if self.options.normalize:
            scale = (x0 - real).abs().flatten(1).mean(dim=1).clamp_min(1e-6)
            grad = grad / scale.view(-1, *([1] * (x0.ndim - 1)))
        return torch.nan_to_num(grad)

    def _critic_loss(self, batch: Batch, roles: Roles) -> Losses:
        o, p, critic = self.options, self.process, roles.critic
        with torch.no_grad():
            x0 = self.generate(batch, roles)
        t = self._times(batch)
        x_t = self._noised(x0, batch, t)
        target = p.convert(x0, x_t, t, "x0", critic.prediction)  # the critic's native target
        denoise = F.mse_loss(critic.raw(x_t, t, batch.cond), target)
        terms = {"denoise": denoise}
        total = denoise
        if self.discriminates:
            if batch.x0 is None:
                raise DistillError(f"{self.name}: its discriminator needs real data, but the batch has none")
            t_gan = self._gan_times(batch, t)
            fake_t = x_t if t_gan is t else self._noised(x0, batch, t_gan)
            real_t = self._noised(batch.x0, batch, t_gan)
            if o.r1_weight > 0:
                real_t.requires_grad_(True)
            fake_logits = self._logits(roles, fake_t, t_gan, batch.cond)
            real_logits = self._logits(roles, real_t, t_gan, batch.cond)
            disc = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
            terms["discriminator"] = disc
            total = total + o.gan_critic_weight * disc
            if o.r1_weight > 0:
                r1 = r1_penalty(real_logits, real_t)
                terms["r1"] = r1
                total = total + 0.5 * o.r1_weight * r1
        return Losses(total=total, terms=terms)
