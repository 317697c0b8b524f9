"""Evaluation helpers: the same noise for every row, and an independent re-noising stream."""
from __future__ import annotations

import torch
from torch import nn

from distill import Denoiser, Method, make_process
from distill.evaluation import Row, generate, paired_rmse, records_with_speedup, student_sample_fn


class Recorder(nn.Module):
    """Predicts x0 = 0 and records every input it sees."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, t, cond=None, **extra):
        self.inputs.append(x.clone())
        return torch.zeros_like(x)


def test_multistep_student_renoises_with_fresh_noise_not_the_initial_noise():
    process = make_process("flow")
    net = Recorder()
    method = Method()
    method.process = process
    noise = torch.randn(4096, 2, generator=torch.Generator().manual_seed(7))
    generate(student_sample_fn(method, Denoiser(net, process), steps=2, seed=7), noise, None, 4096, progress=False)
    first, second = net.inputs
    assert torch.equal(first, noise * process.sigma(torch.tensor(1.0)))
    # x0 = 0, so the second input is sigma(t_1) z: z must be independent of the starting noise
    z = second / second.std()
    correlation = (z * noise).mean() / (noise.std() * z.std())
    assert abs(correlation) < 5 / 4096**0.5  # five standard errors of a zero correlation


def test_speedup_records_and_paired_rmse():
    rows = [Row("teacher", 18, 35, 2.0), Row("kd", 1, 1, 0.5)]
    records = records_with_speedup(rows, rows[0].ms_per_sample)
    assert [r["speedup_vs_teacher"] for r in records] == [1.0, 4.0]
    a = torch.zeros(3, 2)
    assert paired_rmse(a, a + 2.0) == 2.0


def test_score_adds_paired_metrics_only_against_a_baseline():
    from distill.evaluation import score

    class Recorder:
        def evaluate(self, samples, reference, cond=None, **context):
            self.context = context
            return {"n": samples.shape[0]}

    m, x = Recorder(), torch.zeros(4, 2)
    assert score(m, x, None) == {"n": 4} and m.context == {}
    out = score(m, x, None, baseline=torch.ones(4, 2))
    assert out == {"n": 4, "paired_rmse_vs_teacher": 1.0} and torch.equal(m.context["teacher_samples"], torch.ones(4, 2))


def test_noise_and_cond_draws_the_modality_evaluation_conditions():
    from distill.evaluation import noise_and_cond
    from distill.modality import Modality

    class Labelled(Modality):
        sample_shape = (2,)

        def sample_condition(self, n, generator=None, device=None):
            return torch.zeros(n, dtype=torch.long)

        def evaluation_condition(self, n, generator=None, device=None):
            return torch.arange(n)

    class Default(Labelled):
        evaluation_condition = Modality.evaluation_condition

    noise, cond = noise_and_cond(Labelled(), 5, seed=3)
    assert noise.shape == (5, 2) and cond.tolist() == [0, 1, 2, 3, 4]
    # by default an evaluation draws what training draws
    assert noise_and_cond(Default(), 5, seed=3)[1].tolist() == [0] * 5
    assert torch.equal(noise_and_cond(Default(), 5, seed=3)[0], noise)
