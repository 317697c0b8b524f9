"""Generate with a teacher or a student, time it, and score it with the modality's metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import Progress

from distill.denoiser import Denoiser
from distill.modality import Modality
from distill.process import DiscreteProcess, sampling_schedule
from distill.samplers import SampleResult, get_sampler


@dataclass
class Generated:
    """Samples of one (model, sampler, steps) setting and what producing them cost."""

    samples: torch.Tensor
    nfe: int
    seconds: float
    n: int

    @property
    def ms_per_sample(self) -> float:
        return 1000.0 * self.seconds / self.n


@dataclass
class Row:
    """One benchmark/evaluation row: a setting and its metrics."""

    method: str
    steps: int
    nfe: int
    ms_per_sample: float
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "steps": self.steps, "nfe": self.nfe}
        out.update(self.extra)
        out.update(self.metrics)
        out["ms_per_sample"] = round(self.ms_per_sample, 6)
        return out


def paired_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square distance between samples generated from the same noise."""
    return float((a - b).pow(2).flatten(1).mean(dim=1).mean().sqrt())


def score(modality: Modality, samples: torch.Tensor, reference: Any, cond: Any = None,
          baseline: torch.Tensor | None = None) -> dict[str, Any]:
    """``modality.evaluate`` of decoded ``samples``; with ``baseline`` (the teacher's usual-setting
    samples from the same noise) also the modality's paired metrics and ``paired_rmse_vs_teacher``."""
    if baseline is None:
        return modality.evaluate(samples, reference, cond=cond)
    metrics = modality.evaluate(samples, reference, cond=cond, teacher_samples=baseline)
    metrics["paired_rmse_vs_teacher"] = paired_rmse(samples, baseline)
    return metrics


def records_with_speedup(rows: list[Row], base_ms: float) -> list[dict[str, Any]]:
    """Rows as dicts with ``speedup_vs_teacher = base_ms / ms_per_sample`` (same-process ratio)."""
    records = []
    for row in rows:
        record = row.as_dict()
        record["speedup_vs_teacher"] = round(base_ms / row.ms_per_sample, 3) if row.ms_per_sample > 0 else None
        records.append(record)
    return records


def noise_and_cond(modality: Modality, n: int, seed: int, device: Any = "cpu") -> tuple[torch.Tensor, Any]:
    """The evaluation noise and conditions (:meth:`Modality.evaluation_condition`): the same
    seed gives the same noise to teacher and students."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *modality.sample_shape), generator=generator)
    cond = modality.evaluation_condition(n, generator)
    return noise.to(device), (cond.to(device) if isinstance(cond, torch.Tensor) else cond)


@torch.no_grad()
def generate(
    sample_fn,
    noise: torch.Tensor,
    cond: Any,
    batch_size: int,
    label: str = "sampling",
    progress: bool = True,
) -> Generated:
    """Run ``sample_fn(noise_chunk, cond_chunk) -> SampleResult`` in chunks, timing it."""
    outs, nfe, n = [], 0, noise.shape[0]
    seconds = 0.0
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(label, total=n)
        for start in range(0, n, batch_size):
            chunk = slice(start, min(n, start + batch_size))
            c = cond[chunk] if isinstance(cond, torch.Tensor) else cond
            if noise.is_cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
            result: SampleResult = sample_fn(noise[chunk], c)
            if noise.is_cuda:
                torch.cuda.synchronize()
            seconds += time.perf_counter() - began
            outs.append(result.x0.float().cpu())
            nfe = result.nfe
            bar.update(task, advance=chunk.stop - chunk.start)
    return Generated(torch.cat(outs), nfe, seconds, n)


def teacher_sample_fn(teacher: Denoiser, sampler: str, steps: int, schedule: str = "uniform", guidance=None, null_cond=None, **options):
    process = teacher.process
    timesteps = sampling_schedule(process, steps, kind=schedule)
    if isinstance(process, DiscreteProcess):
        return _token_teacher_fn(teacher, sampler, timesteps, guidance, null_cond, options)
    sigma_max = process.sigma(torch.tensor(process.t_max, dtype=torch.float64))
    fn = get_sampler(sampler)

    def run(noise: torch.Tensor, cond: Any) -> SampleResult:
        x_T = noise * sigma_max.to(noise.dtype)
        return fn(teacher, x_T, cond, timesteps=timesteps, guidance=guidance, null_cond=null_cond, **options)

    return run


def _token_teacher_fn(teacher: Denoiser, sampler: str, timesteps: torch.Tensor, guidance, null_cond, options):
    """A token teacher starts from the prior draw its noise maps to (``process.prior_from_noise``);
    its ancestral draws come from a generator seeded by the noise chunk itself, so the same noise
    gives the same samples (what the sample cache and paired metrics rely on)."""
    from distill.cache import fingerprint

    fn = get_sampler(sampler)

    def run(noise: torch.Tensor, cond: Any) -> SampleResult:
        seed = int(fingerprint("token-teacher", noise.cpu())[:15], 16)
        generator = torch.Generator(device=noise.device).manual_seed(seed)
        x_T = teacher.process.prior_from_noise(noise)
        return fn(teacher, x_T, cond, timesteps=timesteps, generator=generator, guidance=guidance,
                  null_cond=null_cond, **options)

    return run


# The re-noising stream of multistep students must not replay the starting noise:
# with the same seed, z_1 would equal x_T's noise and the chain would be correlated.
RENOISE_SEED_OFFSET = 1_000_003


def student_sample_fn(method, student: Denoiser, steps: int, seed: int = 0):
    """Sampler of a trained student; its re-noising generator is seeded apart from the initial noise."""
    generator = torch.Generator().manual_seed(seed + RENOISE_SEED_OFFSET)

    def run(noise: torch.Tensor, cond: Any) -> SampleResult:
        return method.sample(student, noise, cond, steps=steps, generator=generator)

    return run
