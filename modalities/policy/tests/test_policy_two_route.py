"""The two_route task: exact dynamics, outcomes and a multimodal expert."""
from __future__ import annotations

import math

import torch

from distill_policy.tasks.two_route import TwoRoute, segment_distance


def _state(task, pos, goal=(0.0, 0.8)):
    state = task.reset(len(pos), torch.Generator().manual_seed(0))
    state.data["pos"] = torch.tensor(pos, dtype=torch.float64)
    state.data["goal"] = torch.tensor([goal] * len(pos), dtype=torch.float64)
    return state


def test_segment_distance_is_the_closest_point_distance():
    c = torch.zeros(2, dtype=torch.float64)
    a = torch.tensor([[-1.0, 0.5], [0.3, 0.0], [0.0, -2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.5], [0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(segment_distance(a, b, c), torch.tensor([0.5, 0.3, 0.0], dtype=torch.float64))


def test_collision_success_mode_and_time_out_are_exact():
    task = TwoRoute()
    r = task.config.radius
    # 0: a step that jumps over the disc's edge between two outside points still collides (segment test)
    # 1: passes the obstacle row left of the disc; 2: reaches the goal; 3: stays still
    state = _state(task, [[-r - 0.01, -0.03], [-0.4, -0.02], [0.0, 0.75], [0.9, -0.9]])
    task.step(state, torch.tensor([[0.0, 0.06], [0.0, 0.05], [0.0, 0.03], [0.0, 0.0]]))
    assert state.collision.tolist() == [False, False, False, False]  # 0 moves along x = -r - 0.01: outside
    assert state.mode.tolist() == [0, 0, -1, -1]  # both crossed y = 0 left of the disc
    assert state.success.tolist() == [False, False, True, False]
    # 0: both ends of the step lie outside the disc (|(0.03, 0.249)| = 0.2508), its middle inside
    state = _state(task, [[-0.03, 0.249], [0.3, -0.05]])
    task.step(state, torch.tensor([[0.06, 0.0], [0.0, 0.05]]))  # 1 passes right of the disc
    assert state.collision.tolist() == [True, False] and state.done.tolist() == [True, False]
    assert state.mode.tolist() == [-1, 1]
    # actions are clipped to max_speed; done episodes do not move
    pos = state.data["pos"].clone()
    task.step(state, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(state.data["pos"][0], pos[0])
    torch.testing.assert_close((state.data["pos"][1] - pos[1]).norm(), torch.tensor(task.config.max_speed, dtype=torch.float64))
    still = _state(task, [[0.9, -0.9]])
    for _ in range(task.max_steps):
        task.step(still, torch.zeros(1, 2))
    assert still.done.all() and not still.success.any() and not still.collision.any()


def test_expert_succeeds_with_two_balanced_modes_and_clears_the_obstacle():
    task = TwoRoute()
    demos = task.demos(400, torch.Generator().manual_seed(0))
    assert task.clearance_bound() > task.config.radius + 0.06
    positions = demos.obs[..., :2].double()
    assert (positions.norm(dim=-1) > task.config.radius + 0.06).all()
    # the recorded mode is the route: left demos pass at x < 0
    left_share = float((demos.modes == 0).double().mean())
    assert abs(left_share - 0.5) < 3 * 0.5 / 400 ** 0.5  # binomial(400, 1/2) within 3 standard deviations
    crossing = (positions[..., 1] >= 0).double().argmax(dim=1)
    x_at_row = positions[torch.arange(400), crossing, 0]
    assert ((x_at_row < 0) == (demos.modes == 0)).all()
    # the time limit leaves 10 % over the slowest expert path, which bounds every demonstration
    assert int(demos.lengths.max()) <= task.slowest_expert_steps()
    assert task.max_steps == math.ceil(1.1 * task.slowest_expert_steps())


def test_chunk_metrics_execute_chunks_open_loop():
    task = TwoRoute()
    obs = torch.tensor([[0.0, -0.4, 0.0, 0.8], [0.0, -0.8, 0.0, 0.8]])
    up = torch.tensor([0.0, 0.02]).expand(2, 16, 2)  # 0.32 up: the first ends at y = -0.08, in the disc
    left = torch.tensor([-0.05, 0.0]).expand(2, 16, 2)
    assert task.chunk_metrics(obs, up)["chunk_collision"] == 0.5
    metrics = task.chunk_metrics(obs, left)
    assert metrics["chunk_collision"] == 0.0 and metrics["chunk_left_fraction"] == 1.0
