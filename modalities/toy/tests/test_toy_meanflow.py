"""meanflow distils the exact ring8 teacher into one student for 1, 2 and 4 jumps (fixed seeds).

The run is ``_run`` of test_toy_methods (batch 256, EMA half-life 200, seed 0) plus the two
settings of ``configs/toy/meanflow.yaml`` that ``_run`` has no argument for: the student MLP's
time embedding at ``time_scale: 10`` (d/dt u differentiates it) and a cosine learning-rate decay.
"""
from __future__ import annotations

import pytest

from test_toy_methods import _assert_one_step_within_2x_and_holds_to_four, _run, _scores
from test_toy_shortcut import RECIPE


@pytest.mark.slow
def test_meanflow_student_within_2x_of_teacher_and_improves_with_steps(tmp_path):
    args = {"time_sampler": "uniform", "flow_fraction": 0.25, "weight_p": 0.5, "cache_size": 32768, "lr": 1e-3}
    run = _run(tmp_path, "meanflow", 2000, args, **RECIPE)
    _assert_one_step_within_2x_and_holds_to_four(_scores(run, student_steps=(1, 2, 4)))
