"""shortcut distils the exact ring8 teacher into one student for 1, 2 and 4 steps (fixed seeds).

The run is ``_run`` of test_toy_methods (batch 256, seed 0) plus the settings of
``configs/toy/shortcut.yaml`` that ``_run`` has no argument for: the student MLP's time embedding
at ``time_scale: 10``, a cosine decay of its learning rate, and an EMA half-life of 50 steps (the
EMA makes the self-consistency targets, and its lag adds up over the dyadic levels: with
half-life 200 the one-step SW after 2,000 steps was 0.125, with 50 it was 0.065).
"""
from __future__ import annotations

import pytest

from test_toy_methods import _assert_one_step_within_2x_and_holds_to_four, _run, _scores

# config sections of the flow-map students (merged into _run's config)
RECIPE = {"student": {"network": {"time_scale": 10.0}}, "optim": {"student": {"decay": "cosine"}}}


@pytest.mark.slow
def test_shortcut_student_within_2x_of_teacher_and_improves_with_steps(tmp_path):
    args = {"finest_steps": 16, "bootstrap_fraction": 0.5, "cache_size": 32768, "lr": 1e-3}
    run = _run(tmp_path, "shortcut", 2000, args, **RECIPE, ema={"half_life": 50})
    _assert_one_step_within_2x_and_holds_to_four(_scores(run, student_steps=(1, 2, 4)))
