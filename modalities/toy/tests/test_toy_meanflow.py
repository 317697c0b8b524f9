"""meanflow distils the exact ring8 teacher into one student for 1, 2 and 4 jumps (fixed seeds).

The run is ``_run`` of test_toy_methods (batch 256, EMA half-life 200, seed 0) plus the two
settings of ``configs/toy/meanflow.yaml`` that ``_run`` has no argument for: the student MLP's
time embedding at ``time_scale: 10`` (d/dt u differentiates it) and a cosine learning-rate decay.
"""
from __future__ import annotations

import pytest

from test_toy_methods import _scores
from test_toy_shortcut import RECIPE, run_with


@pytest.mark.slow
def test_meanflow_student_within_2x_of_teacher_and_improves_with_steps(monkeypatch, tmp_path):
    args = {"time_sampler": "uniform", "flow_fraction": 0.25, "weight_p": 0.5, "cache_size": 32768, "lr": 1e-3}
    run = run_with(monkeypatch, tmp_path, "meanflow", 2000, args, RECIPE)
    s = _scores(run, student_steps=(1, 2, 4))
    teacher, one_nfe = s["teacher_heun_35"]["sliced_wasserstein"], s["teacher_euler_1"]["sliced_wasserstein"]
    sw = {k: s[f"student_{k}"]["sliced_wasserstein"] for k in (1, 2, 4)}
    print(f"SW_2: teacher (35 NFE) {teacher:.4f}, 1-NFE teacher {one_nfe:.4f}, student by steps {sw}")
    assert one_nfe > 10 * teacher  # the negative control fails
    assert sw[1] < 2 * teacher, (sw, teacher)
    assert sw[4] <= sw[1], sw  # quality holds or improves from 1 to 4 steps
    assert all(s[f"student_{k}"]["mode_coverage"] == 1.0 for k in (1, 2, 4))
