"""ladd distils the exact ring8 teacher into a one-step student (fixed seeds).

The exact teacher is a formula with no layers, so the discriminator's features come from a
fresh critic MLP trained with its heads (``features: critic``); the "real" samples are the
exact teacher's cached Heun-18 ODE samples (data-free). The run is ``_run`` of
test_toy_methods with the recipe of configs/toy/ladd.yaml (the toy bench's, with its budget).

The methods issue asks for 2x the teacher's SW_2. `ladd` holds it on every trainer seed measured
with this recipe (one-step SW_2 / teacher at seeds 0, 1, 2: 1.57x, 1.97x, 1.47x; every mode,
mode-weight TV 0.02 at most; seed 1 only just), so its test, on seed 0, asks for 2x. `add`
reached 2.3x with its recipe on seed 0 (1.55x and 1.96x on seeds 1 and 2; 2.7-4x with earlier
recipes, one of which dropped a mode), so its test holds the weaker bar of 3x with every mode
covered; the shortfall is in docs/methods/add.md.
"""
from __future__ import annotations

import pytest

from test_toy_methods import _run, _scores, assert_one_step_within_bar
from distill_toy.bench import METHOD_CONFIGS, STEPS


def _recipe_run(tmp_path, method: str, student_steps: int):
    recipe = METHOD_CONFIGS[method]
    return _run(tmp_path, method, STEPS[method], recipe["method_args"], student_steps=student_steps,
                **{k: v for k, v in recipe.items() if k != "method_args"})


@pytest.mark.slow
def test_ladd_one_step_student_within_2x_of_teacher(tmp_path):
    assert_one_step_within_bar(_scores(_recipe_run(tmp_path, "ladd", 1)), bar=2.0)
