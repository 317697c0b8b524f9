"""Training diagnostics: diversity against the teacher's, pictures of the score views, collapse alarm."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distill.engine.diagnostics import CRITIC_SIGNAL_TIMES, Diagnostics, critic_signal, pairwise_diversity
from distill.engine.run import train
from distill.errors import DistillError
from distill.report import diagnostics_section
from tests.engine.test_engine import tiny


def test_pairwise_diversity_closed_form():
    # distances: |a-b| = 5, |a-c| = 1, |b-c| = sqrt(9 + 25) ; mean over ordered pairs i != j
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, -1.0]])
    assert pairwise_diversity(x) == pytest.approx((5 + 1 + math.sqrt(34)) / 3, rel=1e-6)
    assert pairwise_diversity(torch.ones(5, 3, 2)) == 0.0
    with pytest.raises(ValueError):
        pairwise_diversity(torch.zeros(1, 2))


def test_critic_signal_splits_signal_from_error():
    """q = (|s|^2 - |e|^2) / |s - e|^2 with s = real - F*, e = fake - F*, F* = E[x0 | x_t].

    Exact on a finite 'posterior': each x_t has two equally likely clean samples x0 = m +- d, so
    F* = m and the cross terms with (x0 - F*) cancel within each pair. Batches pool their sums."""
    g = torch.Generator().manual_seed(0)
    m, d, s, e = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(4))
    x0 = torch.cat([m + d, m - d])

    def batch(signal, error, rows=slice(None)):
        real, fake = (m + signal).repeat(2, 1), (m + error).repeat(2, 1)
        both = torch.cat([torch.arange(8)[rows], 8 + torch.arange(8)[rows]])  # keep each pair together
        return x0[both], real[both], fake[both]

    expected = (s.pow(2).sum() - e.pow(2).sum()) / (s - e).pow(2).sum()
    assert critic_signal([batch(s, e)]) == pytest.approx(float(expected), rel=1e-9)
    assert critic_signal([batch(s, e, slice(0, 3)), batch(s, e, slice(3, 8))]) == pytest.approx(float(expected), rel=1e-9)
    assert critic_signal([batch(s, torch.zeros_like(s))]) == pytest.approx(1.0)  # a perfect critic: all signal
    assert critic_signal([batch(torch.zeros_like(s), e)]) == pytest.approx(-1.0)  # student matches teacher: all error
    assert critic_signal([(x0, x0 + 1, x0 + 1)]) is None  # critic == teacher: nothing to split


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "diagnostics/diversity" in r]


def test_checks_every_n_steps_with_teacher_and_critic_views(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=4", "eval.every=2", "eval.diagnostics_samples=32"))
    checks = _records(run.run_dir)
    assert [r["step"] for r in checks] == [2, 4]
    for r in checks:  # a fresh MLP student after 2-4 steps: some positive diversity, compared with the teacher's
        assert r["diagnostics/diversity"] > 0 and r["diagnostics/diversity_ratio"] > 0
        assert isinstance(r["diagnostics/collapse"], bool) and isinstance(r["diagnostics/divergence"], bool)
        signal = [r[f"diagnostics/critic_signal/t={t:g}"] for t in CRITIC_SIGNAL_TIMES]
        assert all(math.isfinite(q) for q in signal)
    pictures = sorted((run.run_dir / "samples" / "diagnostics").iterdir())
    # the fixture modality has no comparison writer: one file per panel (student, teacher view, critic view)
    assert len([p for p in pictures if p.name.startswith("step_0000004")]) == 3
    section = diagnostics_section(run.run_dir)
    assert any("Training diagnostics" in line for line in section)
    assert any("Critic signal at the last check (step 4)" in line for line in section)


def test_methods_without_a_fake_score_log_no_critic_signal(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "kd", "trainer.max_steps=2", "eval.every=2"))
    (check,) = _records(run.run_dir)
    assert not [k for k in check if "critic_signal" in k]


def test_collapsed_student_raises_the_alarm(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=2", "eval.every=1"))
    module = run.module
    callback = next(c for c in run.trainer.callbacks if isinstance(c, Diagnostics))
    # A "student" that draws exactly the teacher's samples from the same noise has ratio 1: no alarm.
    from distill.evaluation import teacher_sample_fn

    sampler = teacher_sample_fn(module.teacher, "heun", 8)
    original = module.method.sample
    module.method.sample = lambda student, noise, cond=None, steps=1, generator=None: sampler(noise, cond)
    record, alarm = callback.check(module, step=98)
    assert alarm is None and record["diagnostics/diversity_ratio"] == pytest.approx(1.0, rel=1e-5)
    module.method.sample = original
    # Collapse the student by hand: zero its output layer, so every noise maps to one point.
    last = [m for m in module.trained["student"].net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    record, alarm = callback.check(module, step=99)
    assert alarm is not None and record["diagnostics/collapse"] is True and record["diagnostics/diversity"] == 0.0
    assert alarm.kind == "collapse" and alarm.ratio < 0.5 and "collapse alarm at step 99" in alarm.message(0.5)


def test_bad_diagnostics_settings_are_rejected(tmp_path, fixture_plugins):
    with pytest.raises(DistillError, match="collapse_fraction"):
        tiny(tmp_path, "dmd2", "eval.collapse_fraction=0")
    with pytest.raises(DistillError, match="diagnostics_samples"):
        tiny(tmp_path, "dmd2", "eval.diagnostics_samples=1")
