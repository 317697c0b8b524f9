"""reflow straightens the exact ring8 teacher's flow: 1, 2 and 4 Euler steps within 2x of Heun-35,
and InstaFlow's one-step distillation of the reflowed model after it."""
from __future__ import annotations

import pytest

from test_toy_methods import _scores
from test_toy_progressive import run_keeping, score


@pytest.mark.slow
def test_reflow_euler_students_and_one_step_distillation(monkeypatch, tmp_path):
    args = {"cache_size": 32768, "lr": 2e-3, "distill_from_step": 2000, "teacher_weights": "ema"}
    # The EMA at the switch is the reflowed (2-rectified) flow; from there the run distils it.
    run, kept = run_keeping(monkeypatch, tmp_path, "reflow", 3000, args, {0: 2000})
    s = _scores(run)
    teacher = s["teacher_heun_35"]["sliced_wasserstein"]
    sw = {}
    for steps in (1, 2, 4):
        metrics = score(run, kept[0], steps)
        assert metrics["mode_coverage"] == 1.0, (steps, metrics)
        sw[steps] = metrics["sliced_wasserstein"]
    assert sw[1] < 2 * teacher, (sw, teacher)
    assert sw[2] <= 1.05 * sw[1] and sw[4] <= 1.05 * sw[1], sw  # straighter flow: more Euler steps help or hold
    distilled = s["student_1"]
    assert distilled["mode_coverage"] == 1.0
    assert distilled["sliced_wasserstein"] < 2 * teacher, (distilled, teacher)
