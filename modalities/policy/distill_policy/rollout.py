"""Receding-horizon rollouts of a policy in a task's vectorised environment, and latency.

Chi et al. 2023 (Diffusion Policy, Sec. III-B): every ``n_action_steps`` steps the policy reads
the last ``n_obs_steps`` observations, samples an action chunk of ``horizon`` steps and the
first ``n_action_steps`` of it are executed open-loop. All ``N`` episodes advance in lock-step,
so each planning round is *one* batched policy call over the episodes still running.

A policy here is ``act(cond, noise, generator) -> actions``: normalised observation histories
``[B, n_obs_steps, obs_dim]`` and unit Gaussian noise ``[B, horizon, action_dim]`` in,
normalised actions out. The noise of planning round ``k`` is drawn for all ``N`` episodes from
a generator seeded by the rollout seed, so two policies rolled out with the same seed start
every episode in the same place and every round from the same noise (paired comparisons).
Sampled actions are clipped to [-1, 1] before un-normalising (DDPM's ``clip_sample`` of Chi et
al.'s configuration: the data occupy exactly that box).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from rich.progress import Progress

from distill.errors import DistillError
from distill_policy.normalizer import Normalizer
from distill_policy.tasks.base import Task

Act = Callable[[Any, torch.Tensor, torch.Generator], torch.Tensor]
# the noise stream sits apart from the environment's (same seed, different stream)
NOISE_SEED_OFFSET = 7_000_003


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001
    recommend it over the normal approximation at n ~ 100 and near 0 or 1):
    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class RolloutResult:
    """Outcomes of ``N`` episodes: ``success``, ``collision`` [N] bool, ``mode`` [N] (index into
    ``modes``, -1: none), ``steps`` [N], ``paths`` [N, T + 1, 2] (positions, for plots),
    the number of batched policy calls and their total seconds."""

    task: str
    modes: tuple[str, ...]
    success: torch.Tensor
    collision: torch.Tensor
    mode: torch.Tensor
    steps: torch.Tensor
    paths: torch.Tensor
    policy_calls: int
    policy_seconds: float
    collisions: bool = True  # False: the task has no collision failures; ``collision`` is then None

    @property
    def n(self) -> int:
        return int(self.success.shape[0])

    def summary(self) -> dict[str, Any]:
        """``success`` (rate), ``success_ci95`` (Wilson), ``collision`` (rate), ``mode_fractions``
        (share of all episodes per mode; the rest decided none), ``jerk`` (mean second difference
        of the positions, task units per step), ``episodes``."""
        wins = int(self.success.sum())
        # jerk: mean |p_{k+1} - 2 p_k + p_{k-1}| over the steps each episode took -- 0 for steady motion;
        # a policy whose chunks are noise (clipped at the action box) zig-zags and scores high
        d2 = (self.paths[:, 2:] - 2 * self.paths[:, 1:-1] + self.paths[:, :-2]).norm(dim=-1)
        k = torch.arange(d2.shape[1]).unsqueeze(0)
        inside = (k < (self.steps.unsqueeze(1) - 1)).to(d2.dtype)
        jerk = float((d2 * inside).sum() / inside.sum().clamp_min(1))
        return {
            "success": wins / self.n,
            "success_ci95": [round(v, 4) for v in wilson_interval(wins, self.n)],
            "collision": float(self.collision.double().mean()) if self.collisions else None,
            "mode_fractions": {name: float((self.mode == k).double().mean()) for k, name in enumerate(self.modes)},
            "jerk": jerk,
            "episodes": self.n,
        }


def rollout(
    task: Task,
    act: Act,
    normalizer: Normalizer,
    n_episodes: int,
    seed: int,
    n_obs_steps: int,
    horizon: int,
    n_action_steps: int,
    progress: bool = True,
    label: str = "rollouts",
) -> RolloutResult:
    """Roll ``n_episodes`` episodes out with ``act`` (see module docstring); deterministic given ``seed``."""
    if not 1 <= n_action_steps <= horizon:
        raise DistillError(f"n_action_steps must be in [1, horizon={horizon}]; got {n_action_steps}")
    normalizer.check("rolled-out policy")
    if normalizer.obs_dim != task.obs_dim or normalizer.action_dim != task.action_dim:
        raise DistillError(
            f"this policy reads {normalizer.obs_dim}-dimensional observations and writes {normalizer.action_dim}-dimensional "
            f"actions, but task {task.name!r} has {task.obs_dim} and {task.action_dim}; roll it out on the task it was trained on"
        )
    env_gen = torch.Generator().manual_seed(int(seed))
    noise_gen = torch.Generator().manual_seed(int(seed) + NOISE_SEED_OFFSET)
    sample_gen = torch.Generator().manual_seed(int(seed) + 2 * NOISE_SEED_OFFSET)
    group = int(task.max_batch or n_episodes)
    rounds = math.ceil(task.max_steps / n_action_steps)
    parts: list[dict[str, Any]] = []
    calls, seconds = 0, 0.0
    with Progress(transient=True, disable=not progress) as bar:
        job = bar.add_task(label, total=rounds * math.ceil(n_episodes / group))
        # Episodes run in groups of task.max_batch (all at once for tensor tasks); the generators
        # run on across groups, so results depend on the seed and the group size only.
        for first in range(0, n_episodes, group):
            n = min(group, n_episodes - first)
            state = task.reset(n, env_gen)
            history = [task.observe(state)] * n_obs_steps
            for _ in range(rounds):
                noise = torch.randn((n, horizon, task.action_dim), generator=noise_gen)
                bar.advance(job)
                active = (~state.done).nonzero(as_tuple=True)[0]
                if active.numel() == 0:
                    continue  # draw the noise anyway: the next group's stream must not depend on this one's speed
                cond = normalizer.normalize_obs(torch.stack(history[-n_obs_steps:], dim=1)[active])
                began = time.perf_counter()
                with torch.no_grad():
                    chunk = act(cond, noise[active], sample_gen)
                seconds += time.perf_counter() - began
                calls += 1
                actions = normalizer.unnormalize_action(chunk.float().clamp(-1.0, 1.0))
                for j in range(n_action_steps):
                    full = torch.zeros(n, task.action_dim)
                    full[active] = actions[:, j]
                    task.step(state, full)
                    history.append(task.observe(state))
                    if bool(state.done.all()):
                        break
            # episodes still running after max_steps are time-outs (the task marks them done)
            parts.append({"success": state.success.clone(), "collision": state.collision.clone(), "mode": state.mode.clone(),
                          "steps": state.t.clone(), "paths": torch.stack(state.path, dim=1).float()})
    longest = max(p["paths"].shape[1] for p in parts)
    paths = torch.cat([torch.cat([p["paths"], p["paths"][:, -1:].expand(-1, longest - p["paths"].shape[1], -1)], 1)
                       for p in parts])
    return RolloutResult(task=task.name, modes=task.modes, success=torch.cat([p["success"] for p in parts]),
                         collision=torch.cat([p["collision"] for p in parts]), mode=torch.cat([p["mode"] for p in parts]),
                         steps=torch.cat([p["steps"] for p in parts]), paths=paths, policy_calls=calls,
                         policy_seconds=seconds, collisions=bool(task.collisions))


@torch.no_grad()
def chunk_latency(act: Act, cond: Any, horizon: int, action_dim: int, calls: int = 20, min_calls: int = 3,
                  max_seconds: float = 20.0, seed: int = 0) -> dict[str, float]:
    """Milliseconds per action chunk of one robot: ``act`` at batch 1 on the observation histories
    ``cond [K, n_obs_steps, obs_dim]`` (cycled), after one warm-up call; the median over up to
    ``calls`` calls (at least ``min_calls``; fewer than ``calls`` once ``max_seconds`` have passed).
    Returns ``ms_per_chunk`` and ``hz`` (chunks per second = 1000 / ms_per_chunk)."""
    generator = torch.Generator().manual_seed(seed)
    k = int(cond.shape[0])
    noise = torch.randn((max(calls, 1) + 1, 1, horizon, action_dim), generator=generator)
    act(cond[:1], noise[0], generator)  # warm-up: first-call allocations are not latency
    times: list[float] = []
    started = time.perf_counter()
    for i in range(calls):
        began = time.perf_counter()
        act(cond[(i % k):(i % k) + 1], noise[i + 1], generator)
        times.append(time.perf_counter() - began)
        if len(times) >= min_calls and time.perf_counter() - started > max_seconds:
            break
    ms = 1000.0 * statistics.median(times)
    return {"ms_per_chunk": ms, "hz": 1000.0 / ms, "latency_calls": len(times)}
