"""distill_policy.rollout: receding-horizon rollouts with exact outcomes, and the interval."""
from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill_policy.normalizer import Normalizer
from distill_policy.rollout import chunk_latency, rollout, wilson_interval
from distill_policy.tasks.two_route import TwoRoute


def _normalizer(task):
    demos = task.demos(50, torch.Generator().manual_seed(0))
    return Normalizer(task.obs_dim, task.action_dim).fit(demos.obs, demos.actions)


def _scripted(task, norm, side):
    """A perfect controller: the expert's waypoint rule on the observation, one route only."""
    def act(cond, noise, generator):
        obs = norm.unnormalize_obs(cond[:, -1]).double()
        pos, goal = obs[:, :2].clone(), obs[:, 2:]
        out = []
        for _ in range(noise.shape[1]):
            below = pos[:, 1] < 0.0
            target = torch.where(below.unsqueeze(1), torch.tensor([[side * 0.5, 0.02]], dtype=torch.float64), goal)
            delta = target - pos
            step = delta / delta.norm(dim=1, keepdim=True).clamp_min(1e-9) * delta.norm(dim=1, keepdim=True).clamp(max=0.045)
            out.append(step)
            pos = pos + step
        return norm.normalize_action(torch.stack(out, 1).float())
    return act


def test_wilson_interval_matches_the_formula():
    lo, hi = wilson_interval(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-4) and hi == pytest.approx(0.9448, abs=1e-4)
    assert wilson_interval(0, 100)[0] == 0.0 and wilson_interval(100, 100)[1] == 1.0


def test_a_perfect_controller_succeeds_on_its_route_and_a_straight_one_collides():
    task = TwoRoute()
    norm = _normalizer(task)
    left = rollout(task, _scripted(task, norm, -1.0), norm, 64, seed=5, n_obs_steps=2, horizon=16, n_action_steps=8, progress=False)
    s = left.summary()
    assert s["success"] == 1.0 and s["collision"] == 0.0 and s["mode_fractions"] == {"left": 1.0, "right": 0.0}
    # steady motion with one turn at the waypoint: the turn (|d2| <= 2 * 0.045) spread over ~40 steps
    assert s["jerk"] < 2 * 0.045 / 20
    assert left.policy_calls <= task.max_steps // 8 and left.paths.shape[:2] == (64, int(left.steps.max()) + 1)

    def straight(cond, noise, generator):  # the average of the two routes
        return norm.normalize_action(torch.tensor([0.0, 0.045]).expand(noise.shape[0], 16, 2))

    mean = rollout(task, straight, norm, 64, seed=5, n_obs_steps=2, horizon=16, n_action_steps=8, progress=False).summary()
    assert mean["success"] == 0.0 and mean["collision"] == 1.0


def test_rollouts_are_reproducible_and_paired_by_seed():
    task = TwoRoute()
    norm = _normalizer(task)

    def noisy(cond, noise, generator):  # a policy whose actions are its noise
        return noise.clamp(-1, 1)

    a = rollout(task, noisy, norm, 16, seed=3, n_obs_steps=2, horizon=16, n_action_steps=4, progress=False)
    b = rollout(task, noisy, norm, 16, seed=3, n_obs_steps=2, horizon=16, n_action_steps=4, progress=False)
    c = rollout(task, noisy, norm, 16, seed=4, n_obs_steps=2, horizon=16, n_action_steps=4, progress=False)
    assert torch.equal(a.paths, b.paths)
    assert a.summary()["jerk"] > 0.02  # independent noise each step: |d2| ~ sqrt(2) x the step length
    assert not torch.equal(a.paths, c.paths)
    # another policy with the same seed starts every episode in the same place (paired rows)
    still = rollout(task, lambda cond, noise, g: torch.zeros_like(noise), norm, 16, seed=3, n_obs_steps=2, horizon=16,
                    n_action_steps=4, progress=False)
    assert torch.equal(still.paths[:, 0], a.paths[:, 0])


def test_a_policy_of_another_task_is_refused():
    task = TwoRoute()
    norm = Normalizer(3, 2).fit(torch.randn(10, 3), torch.randn(10, 2))
    with pytest.raises(DistillError, match="3-dimensional observations.*has 4"):
        rollout(task, lambda c, n, g: n, norm, 4, seed=0, n_obs_steps=2, horizon=16, n_action_steps=8, progress=False)
    with pytest.raises(DistillError, match="no statistics"):
        rollout(task, lambda c, n, g: n, Normalizer(4, 2), 4, seed=0, n_obs_steps=2, horizon=16, n_action_steps=8,
                progress=False)


def test_chunk_latency_reports_the_median_at_batch_one():
    seen = []

    def act(cond, noise, generator):
        seen.append(cond.shape[0])
        return noise

    out = chunk_latency(act, torch.zeros(5, 2, 4), horizon=16, action_dim=2, calls=7)
    assert seen == [1] * 8  # a warm-up and 7 timed calls, each for one robot
    assert out["latency_calls"] == 7 and out["hz"] == pytest.approx(1000.0 / out["ms_per_chunk"])
