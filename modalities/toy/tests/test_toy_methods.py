"""The core's methods distil the exact ring8 teacher (step budgets, fixed seeds).

The benchmark (`distill bench toy`, docs/benchmarks.md) holds the wall-clock
results; these tests pin down that each method learns the map from a fixed number
of steps, measured against the teacher on the same 20k noises and reference.
"""
from __future__ import annotations

import pytest
import torch

from distill.bench import deep_merge
from distill.config import _build_run
from distill.engine.run import train
from distill.evaluation import generate, noise_and_cond, student_sample_fn, teacher_sample_fn

N = 20_000


def _run(tmp_path, method: str, steps: int, method_args: dict, student_steps: int = 1, **sections):
    """Train ``method`` on ring8 with the exact teacher; ``sections`` (e.g. ``optim={...}``) are merged in."""
    cfg = _build_run(deep_merge({
        "modality": "toy", "method": method, "method_args": method_args,
        "teacher": {"loader": "exact", "process": "flow"}, "student": {"steps": student_steps},
        "data": {"batch_size": 256}, "ema": {"half_life": 200},
        "trainer": {"max_steps": steps, "progress": False, "checkpoint_every": 0, "log_every": 500, "seed": 0},
        "output": {"dir": str(tmp_path / method)},
    }, sections))
    return train(cfg)


def _scores(run, student_steps=(1,)):
    modality = run.modality
    noise, cond = noise_and_cond(modality, N, seed=7)
    reference = modality.reference(N, torch.Generator().manual_seed(8))
    out = {}
    for name, k in (("heun", 18), ("euler", 1)):
        gen = generate(teacher_sample_fn(run.teacher, name, k), noise, cond, N, progress=False)
        out[f"teacher_{name}_{gen.nfe}"] = modality.evaluate(gen.samples, reference)
    student = run.module.student_for_sampling(ema=True).eval()
    for k in student_steps:
        gen = generate(student_sample_fn(run.module.method, student, k), noise, cond, N, progress=False)
        out[f"student_{k}"] = modality.evaluate(gen.samples, reference)
    return out


def _assert_one_step_within_2x_and_holds_to_four(s):
    """The few-step flow-map bar: 1 step within 2x of the 35-NFE teacher, 4 steps at least as good,
    every mode covered at 1, 2 and 4 steps (``s`` from :func:`_scores` with steps 1, 2, 4)."""
    teacher, one_nfe = s["teacher_heun_35"]["sliced_wasserstein"], s["teacher_euler_1"]["sliced_wasserstein"]
    sw = {k: s[f"student_{k}"]["sliced_wasserstein"] for k in (1, 2, 4)}
    print(f"SW_2: teacher (35 NFE) {teacher:.4f}, 1-NFE teacher {one_nfe:.4f}, student by steps {sw}")
    assert one_nfe > 10 * teacher  # the negative control fails
    assert sw[1] < 2 * teacher, (sw, teacher)
    assert sw[4] <= sw[1], sw  # quality holds or improves from 1 to 4 steps
    assert all(s[f"student_{k}"]["mode_coverage"] == 1.0 for k in (1, 2, 4))


def assert_one_step_within_bar(s, bar: float) -> None:
    """The one-step student within ``bar`` times the 35-NFE teacher's SW_2, every mode covered, and the
    1-NFE teacher (the negative control) over 10x the 35-NFE one (``s`` from :func:`_scores`)."""
    teacher, one_nfe = s["teacher_heun_35"]["sliced_wasserstein"], s["teacher_euler_1"]["sliced_wasserstein"]
    student = s["student_1"]
    print(f"SW_2: teacher (35 NFE) {teacher:.4f}, 1-NFE teacher {one_nfe:.4f}, one-step student "
          f"{student['sliced_wasserstein']:.4f}, mode weight TV {student['mode_weight_tv']:.3f}")
    assert one_nfe > 10 * teacher  # the negative control fails
    assert student["sliced_wasserstein"] < bar * teacher, (student, teacher)
    assert student["mode_coverage"] == 1.0


@pytest.mark.slow
def test_kd_one_step_student_within_2x_of_teacher(tmp_path):
    run = _run(tmp_path, "kd", 4000, {"cache_size": 32768, "lr": 1e-3})
    assert_one_step_within_bar(_scores(run), bar=2.0)


@pytest.mark.slow
def test_dmd_one_step_student_within_2x_of_teacher(tmp_path):
    """The regression on teacher pairs (weight 1, cosine-decayed student rate) gets DMD within 2x
    in 1,500 steps, where dmd2 needs about 6,000 at the recipe's settings, 3,000 with twice the
    critic updates and rates (test_toy_distribution_matching.py; docs/methods/dmd.md)."""
    run = _run(tmp_path, "dmd", 1500, {
        "student_lr": 1e-3, "critic_lr": 3e-3, "critic_prediction": "flow", "critic_updates": 2,
        "regression_weight": 1.0, "cache_size": 32768, "cache_batch": 32768,
    }, optim={"student": {"decay": "cosine"}})
    s = _scores(run)
    assert_one_step_within_bar(s, bar=2.0)
    assert s["student_1"]["mode_weight_tv"] < 0.1
