"""The pointmaze task (gymnasium-robotics, MuJoCo): planner, expert, outcomes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium_robotics")

from distill_policy.tasks.pointmaze import MAZE, SLOWEST_EXPERT_STEPS, PointMaze, corners, plan_cells  # noqa: E402


def test_planner_breaks_ties_at_random_between_the_two_routes():
    rng = np.random.default_rng(0)
    paths = [plan_cells(MAZE, (3, 3), (1, 3), rng) for _ in range(200)]
    assert {len(p) for p in paths} == {7}  # both routes are shortest: 6 moves
    left = sum(p[1] == (3, 2) for p in paths)
    assert abs(left / 200 - 0.5) < 3 * 0.5 / 200 ** 0.5
    assert corners(paths[0]) in ([(3, 1), (1, 1)], [(3, 5), (1, 5)])


@pytest.mark.slow
def test_expert_reaches_the_goal_by_both_routes():
    task = PointMaze()
    demos = task.demos(8, torch.Generator().manual_seed(0))
    assert demos.obs.shape[0] >= 7 and demos.obs.shape[2] == 6 and demos.actions.abs().max() <= 1.0
    assert int(demos.lengths.max()) <= SLOWEST_EXPERT_STEPS
    assert task.max_steps == math.ceil(1.1 * SLOWEST_EXPERT_STEPS)  # the time limit: 10 % over the slowest expert
    # the route the planner chose is the side of the wall where the ball crossed its row
    pos = demos.obs[..., :2]
    crossing = (pos[..., 1] >= 0).double().argmax(dim=1)
    x_at_row = pos[torch.arange(pos.shape[0]), crossing, 0]
    assert ((x_at_row >= 0).long() == demos.modes).all() and 0 < int(demos.modes.sum()) < demos.modes.numel()
    # a still policy times out without success and without collisions (the walls are solid)
    state = task.reset(3, torch.Generator().manual_seed(1))
    for _ in range(task.max_steps):
        task.step(state, torch.zeros(3, 2))
    assert state.done.all() and not state.success.any() and not task.collisions
