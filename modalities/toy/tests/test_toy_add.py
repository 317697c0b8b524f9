"""add distils the exact ring8 teacher: a one-step student within 2x of the teacher, and a
4-step student whose quality holds from 1 to 4 steps (fixed seeds).

The exact teacher is a formula with no layers, so the discriminator's features come from a
fresh critic MLP trained with its heads (``features: critic``); the distillation term and the
real data use the exact mixture. The runs are ``_run`` of test_toy_methods with the recipe of
configs/toy/add.yaml (the toy bench's, with its budget); the bars are test_toy_ladd's.
"""
from __future__ import annotations

import pytest

from test_toy_ladd import _recipe_run, assert_holds_from_one_to_four_steps, assert_one_step_within_2x
from test_toy_methods import _scores


@pytest.mark.slow
def test_add_one_step_student_within_2x_of_teacher(tmp_path):
    assert_one_step_within_2x(_scores(_recipe_run(tmp_path, "add", 1)))


@pytest.mark.slow
def test_add_four_step_student_holds_from_one_to_four_steps(tmp_path):
    """One 4-step student sampled with 1, 2 and 4 steps (the uniform schedules nest)."""
    assert_holds_from_one_to_four_steps(_scores(_recipe_run(tmp_path, "add", 4), student_steps=(1, 2, 4)))
