"""Training diagnostics for every method: what the student draws, what the scores see, collapse alarm.

Every ``eval.every`` distillation steps the callback

* samples the student (the trained weights, not the EMA: a collapse shows there
  first) from a fixed noise and conditioning, at its training step count;
* re-noises those samples to one fixed time (``eval.diagnostics_t``, a fraction of
  ``[t_min, t_max]``) and asks the teacher and, when the method has one, the critic
  for their x0 predictions: side by side with the samples, in a picture under
  ``samples/diagnostics/`` (the modality's comparison writer). For distribution
  matching, the student's update is the difference of the last two panels;
* for a method whose critic is a fake score (``Method.critic_models_student``: DMD
  and its family), measures the **critic signal** at a few noise levels
  (:func:`critic_signal`): how much of the score difference the critic feeds the
  student is the student's real difference from the teacher and how much is the
  critic's own error;
* measures **sample diversity**, the mean pairwise Euclidean distance between the
  samples (or the modality's own ``diversity(samples)`` when it has one), and
  compares it with the teacher's samples from the same noise (its usual sampler,
  drawn once at the start). When the student's diversity falls below
  ``eval.collapse_fraction`` of the teacher's, the **collapse alarm** fires: a
  warning in the log, ``diagnostics/collapse: true`` in ``metrics.jsonl``, and a
  section in ``report.md``. Mode collapse and saturation both shrink diversity;
  distribution-matching students collapse when their critic drifts (Yin et al.
  2024, DMD2 sec. 4.2). The same alarm fires, as a **divergence**, when diversity
  exceeds ``1 / collapse_fraction`` times the teacher's: samples flying apart are
  the other way a destabilised critic shows (on the toy ring, a critic learning rate
  50x too high shrank the student's diversity to as little as 0.25x and, within 100
  steps, blew it up to 2.5-9x the teacher's on 4 of 6 seeds; a fifth went non-finite).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from distill.denoiser import Denoiser
from distill.engine.callbacks import write_jsonl
from distill.evaluation import noise_and_cond, teacher_sample_fn

log = logging.getLogger("distill")

DIAGNOSTICS_SEED_OFFSET = 4_000_037  # the diagnostic noise differs from the evaluation noise
CRITIC_SIGNAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)  # fractions of [t_min, t_max]
# batches of eval.diagnostics_samples student samples per check: on the digits, q at t = 0.9 from one
# batch of 64 varied with the batch by a standard deviation of 0.45, more than from the noise draw
CRITIC_SIGNAL_BATCHES = 8


def critic_signal(batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float | None:
    """How much of a critic's score difference is signal rather than its own error.

    Each batch holds ``(x0, real, fake)``: the student's samples and the teacher's and the
    critic's x0 predictions at their noised copies ``x_t``. With ``F* = E[x0 | x_t]`` under the
    student's distribution (what a perfect fake score predicts), ``s = real - F*`` the score
    difference a perfect critic would report (DMD eq. 7 in x0 form) and ``e = fake - F*`` the
    critic's error,

        q = (E|real - x0|^2 - E|fake - x0|^2) / E|real - fake|^2  ->  (|s|^2 - |e|^2) / |s - e|^2

    because ``E[(real - fake) . (real + fake - 2 x0) | x_t] = (s - e) . (s + e)``. So ``q = 1``: the
    difference is all signal; ``q = 0``: the error is as large as the signal; ``q = -1``: the
    student already matches the teacher there and the whole difference is error. The sums run
    over all batches (a ratio of pooled sums). ``None`` when the critic and the teacher agree to
    rounding (nothing to split)."""
    gain = fed = scale = 0.0
    for x0, real, fake in batches:
        real, fake, x0 = real.double(), fake.double(), x0.double()
        fed += float((real - fake).pow(2).sum())
        teacher_loss = float((real - x0).pow(2).sum())
        gain += teacher_loss - float((fake - x0).pow(2).sum())
        scale += teacher_loss
    if fed <= 1e-12 * max(scale, 1e-30):
        return None
    return gain / fed


def pairwise_diversity(samples: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs ``i != j`` of flattened samples."""
    flat = samples.detach().float().reshape(samples.shape[0], -1)
    n = flat.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least two samples")
    distances = torch.cdist(flat, flat)
    return float(distances.sum() / (n * (n - 1)))


def diversity(modality: Any, samples: torch.Tensor) -> float:
    custom = getattr(modality, "diversity", None)
    return float(custom(samples)) if custom is not None else pairwise_diversity(samples)


@dataclass
class CollapseAlarm:
    step: int
    diversity: float
    teacher_diversity: float
    kind: str  # "collapse" (diversity below the fraction) or "divergence" (above its inverse)

    @property
    def ratio(self) -> float:
        return self.diversity / self.teacher_diversity

    def message(self, fraction: float) -> str:
        if self.kind == "collapse":
            what = (f"below the alarm threshold eval.collapse_fraction={fraction:g}. Its samples are collapsing "
                    "to a few modes or saturating")
        else:
            what = (f"above 1/eval.collapse_fraction={1 / fraction:g} times it. Its samples are flying apart")
        return (f"{self.kind} alarm at step {self.step}: the student's sample diversity {self.diversity:.4g} is "
                f"{self.ratio:.0%} of the teacher's ({self.teacher_diversity:.4g}), {what}; lower the critic/student "
                "learning rates or raise the critic's update ratio, and look at samples/diagnostics/")


def _denoising_critic(module) -> Denoiser | None:
    """The run's ``critic`` role when it is a denoiser (it has x0 predictions to show), else None."""
    critic = module.trained["critic"] if "critic" in module.trained else None
    return critic if isinstance(critic, Denoiser) else None


def _noised(process, x0: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0`` noised to the time ``fraction`` of ``[t_min, t_max]`` with noise from ``generator``; (x_t, t)."""
    t = torch.full((x0.shape[0],), process.t_min + fraction * (process.t_max - process.t_min),
                   device=x0.device, dtype=x0.dtype)
    return process.add_noise(x0, torch.randn(x0.shape, generator=generator).to(x0), t), t


class Diagnostics(Callback):
    """See the module docstring. ``module.collapse_alarms`` lists the alarms raised."""

    def __init__(self, run_dir: Path, every: int, n: int = 64, fraction: float = 0.5, t_fraction: float = 0.5,
                 seed: int = 1234) -> None:
        if every < 1:
            raise ValueError("Diagnostics needs every >= 1")
        self.run_dir = Path(run_dir)
        self.every, self.n, self.fraction, self.t_fraction = every, n, fraction, t_fraction
        self.seed = seed + DIAGNOSTICS_SEED_OFFSET
        self.teacher_diversity: float | None = None

    # --- set-up: fixed noise and the teacher's reference diversity ----------
    # Every rank samples (a sharded student needs all ranks in its forward); rank 0 writes.
    def on_train_start(self, trainer, module) -> None:
        module.collapse_alarms = []
        self.noise, self.cond = noise_and_cond(module.modality, self.n, self.seed, device=module.device)
        teacher = module.teacher
        if teacher is None:  # a model trained from data: no reference, pictures only
            return
        setting = dict(module.cfg.teacher_sampler)
        name, steps = setting.pop("name", "heun"), setting.pop("steps", 18)
        with torch.no_grad():
            samples = teacher_sample_fn(teacher, name, steps, **setting)(self.noise, self.cond).x0
        self.teacher_diversity = diversity(module.modality, module.modality.decode(samples))

    # --- every `every` steps ---------------------------------------------------
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = int(module.distill_step)
        if step % self.every:
            return
        record, alarm = self.check(module, step, write=trainer.is_global_zero)
        if not trainer.is_global_zero:
            return
        write_jsonl(self.run_dir / "metrics.jsonl", record)
        if alarm is not None:
            module.collapse_alarms.append(alarm)
            message = alarm.message(self.fraction)
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=1)

    @torch.no_grad()
    def check(self, module, step: int, write: bool = True) -> tuple[dict[str, Any], CollapseAlarm | None]:
        method, modality = module.method, module.modality
        student = module.trained["student"]
        was_training = student.training
        student.eval()
        try:
            generator = torch.Generator().manual_seed(self.seed + 1)
            samples = method.sample(student, self.noise, self.cond, steps=module.cfg.student.steps, generator=generator).x0
            panels = {f"student, step {step}": samples}
            panels.update(self._score_views(module, samples))
            signal = self._critic_signal(module)
        finally:
            student.train(was_training)
        decoded = {label: modality.decode(x) for label, x in panels.items()}
        if write:
            self._picture(modality, decoded, step)
        value = diversity(modality, decoded[f"student, step {step}"])
        record: dict[str, Any] = {"step": step, "diagnostics/diversity": value, **signal}
        alarm = None
        if self.teacher_diversity:
            ratio = value / self.teacher_diversity
            record["diagnostics/diversity_ratio"] = ratio
            record["diagnostics/collapse"] = ratio < self.fraction
            record["diagnostics/divergence"] = ratio > 1 / self.fraction
            if record["diagnostics/collapse"] or record["diagnostics/divergence"]:
                kind = "collapse" if record["diagnostics/collapse"] else "divergence"
                alarm = CollapseAlarm(step, value, self.teacher_diversity, kind)
        return record, alarm

    def _score_views(self, module, samples: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher's and critic's x0 predictions from the same noised student samples."""
        process = module.trained["student"].process
        generator = torch.Generator().manual_seed(self.seed + 2)
        x_t, t = _noised(process, samples, self.t_fraction, generator)
        views = {}
        if module.teacher is not None:
            views[f"teacher x0 at t={self.t_fraction:g}"] = module.teacher.predict(x_t, t, self.cond)
        critic = _denoising_critic(module)
        if critic is not None:
            views[f"critic x0 at t={self.t_fraction:g}"] = critic.predict(x_t, t, self.cond)
        return views

    def _critic_signal(self, module) -> dict[str, float]:
        """:func:`critic_signal` at each of ``CRITIC_SIGNAL_TIMES`` on ``CRITIC_SIGNAL_BATCHES`` batches
        of fresh student samples, under fixed noise; empty when the method has no fake-score critic."""
        critic = _denoising_critic(module)
        if module.teacher is None or not module.method.critic_models_student or critic is None:
            return {}
        process, student = critic.process, module.trained["student"]
        batches: dict[float, list] = {fraction: [] for fraction in CRITIC_SIGNAL_TIMES}
        for b in range(CRITIC_SIGNAL_BATCHES):
            seed = self.seed + 10 + b
            noise, cond = noise_and_cond(module.modality, self.n, seed, device=module.device)
            # its own stream: seeded like the student's noise, x_t's first draw would repeat that noise
            generator = torch.Generator().manual_seed(seed + CRITIC_SIGNAL_BATCHES)
            x0 = module.method.sample(student, noise, cond, steps=module.cfg.student.steps, generator=generator).x0
            for fraction in CRITIC_SIGNAL_TIMES:
                x_t, t = _noised(process, x0, fraction, generator)
                batches[fraction].append((x0, module.teacher.predict(x_t, t, cond), critic.predict(x_t, t, cond)))
        out = {}
        for fraction, pooled in batches.items():
            q = critic_signal(pooled)
            if q is not None:
                out[f"diagnostics/critic_signal/t={fraction:g}"] = q
        return out

    def _picture(self, modality, panels: dict[str, torch.Tensor], step: int) -> None:
        from distill.report import save_panels

        try:
            save_panels(modality, panels, self.run_dir / "samples" / "diagnostics", self.cond, name=f"step_{step:07d}")
        except NotImplementedError:  # a modality without pictures still gets the numbers
            pass
