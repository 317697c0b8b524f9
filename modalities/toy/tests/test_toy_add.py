"""add distils the exact ring8 teacher into a one-step student (fixed seeds).

The exact teacher is a formula with no layers, so the discriminator's features come from a
fresh critic MLP trained with its heads (``features: critic``); the distillation term and the
real data use the exact mixture. The run is ``_run`` of test_toy_methods with the recipe of
configs/toy/add.yaml (the toy bench's, with its budget); the bar and why it is 3x, not the
issue's 2x: test_toy_ladd.
"""
from __future__ import annotations

import pytest

from test_toy_ladd import _recipe_run
from test_toy_methods import _scores, assert_one_step_within_bar


@pytest.mark.slow
def test_add_one_step_student_within_3x_of_teacher(tmp_path):
    assert_one_step_within_bar(_scores(_recipe_run(tmp_path, "add", 1)), bar=3.0)
