"""cd and lcm distil the exact ring8 teacher: 1 step within 2x the teacher, 2-4 steps hold.

The teacher's SW_2 at 35 NFE is the finite-sample floor of the metric at 20,000
samples (independent draws of the data itself score 0.03-0.07 against the same
reference), so "holds" allows a quarter of it on top of the one-step score.
"""
from __future__ import annotations

import pytest

from test_toy_methods import _run, _scores

# The recipe of configs/toy/cd.yaml at a test budget: the edm parameterisation (a fresh MLP
# gets the near-identity at low noise for free), a uniform grid of 40 intervals, the
# multistep sampler on the karras times (the last evaluation stays at mid noise, where
# the learnt consistency function is most accurate relative to the data's scale).
CD_ARGS = {
    "num_steps": 40, "schedule": "uniform", "teacher_solver": "heun", "target_ema": 0.95,
    "parameterization": "edm", "sigma_data": 0.5, "distance": "mse", "lr": 1e-3, "sample_schedule": "karras",
}
STEPS = 4000


def _check(s):
    teacher = s["teacher_heun_35"]["sliced_wasserstein"]
    sw = {k: s[f"student_{k}"]["sliced_wasserstein"] for k in (1, 2, 4)}
    assert s["teacher_euler_1"]["sliced_wasserstein"] > 10 * teacher  # the negative control fails
    assert sw[1] < 2 * teacher, (sw, teacher)
    floor = 0.25 * teacher
    assert sw[2] <= sw[1] + floor and sw[4] <= sw[1] + floor, (sw, teacher)
    for k in (1, 2, 4):
        assert s[f"student_{k}"]["mode_coverage"] == 1.0
        assert s[f"student_{k}"]["mode_weight_tv"] < 0.05


@pytest.mark.slow
def test_cd_one_step_within_2x_of_teacher_and_holds_to_four_steps(tmp_path):
    run = _run(tmp_path, "cd", STEPS, CD_ARGS)
    _check(_scores(run, student_steps=(1, 2, 4)))


@pytest.mark.slow
def test_lcm_one_step_within_2x_of_teacher_and_holds_to_four_steps(tmp_path):
    """ring8 is unconditional: guidance is a no-op and the student learns to ignore w."""
    args = {**CD_ARGS, "teacher_solver": "ddim", "skip": 1, "guidance_min": 1.0, "guidance_max": 4.0, "guidance": 2.0}
    run = _run(tmp_path, "lcm", STEPS, args)
    _check(_scores(run, student_steps=(1, 2, 4)))
