"""``pointmaze``: PointMaze from gymnasium-robotics (MuJoCo, offline), around a wall two ways.

The environment is ``PointMaze_UMaze-v3`` of gymnasium-robotics (Fu et al. 2020, D4RL's
maze2d; de Lazcano et al. 2023) on the maze below: a force-actuated ball (actions in
``[-1, 1]^2``, velocity clipped to 5) starts near the bottom centre cell and must reach the
goal near the top centre cell; a wall three cells wide lies between them, so there are two
shortest routes, left and right, of equal length::

    1 1 1 1 1 1 1
    1 . . g . . 1        g: goal cell (1, 3)
    1 . 1 1 1 . 1        (the environment adds U[-0.25, 0.25] to goal and start, per axis)
    1 . . s . . 1        s: start cell (3, 3)
    1 1 1 1 1 1 1

Success is the environment's own (``info["success"]``: within 0.45 of the goal) within ``max_steps``
policy steps, 1.1x the slowest expert episode (the environment's default limit is twice as long,
and a policy that bounces along the walls still arrives within it). The walls are
solid, so there are no collision failures (``collision`` is not reported). **Mode**: the side of
the wall (``left`` if ``x < 0``) where the ball first crosses the wall's row ``y = 0``. Each
policy action is applied for ``action_repeat`` simulator steps (0.01 s each).

Scripted expert: a breadth-first waypoint planner over the maze cells whose ties between
equally short next cells are broken at random (here: the first move, left or right, with
probability 1/2), then a PD controller ``a = clip(kp (w - p) - kd v, -1, 1)`` towards each
corner waypoint and finally the goal itself.

Each episode is its own MuJoCo environment; the task keeps a pool of them (built once per
process, about 0.1-0.4 s each) and steps them in a Python loop.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from distill_policy.tasks.base import TIME_LIMIT_SLACK, Demos, EpisodeState, Task

MAZE = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1],
]


# the longest of 1,200 expert episodes (3 x 400 demonstrations, generator seeds 100-102): 70 policy steps
SLOWEST_EXPERT_STEPS = 70


@dataclass(frozen=True)
class PointMazeConfig:
    maze: tuple = tuple(tuple(row) for row in MAZE)
    goal_cell: tuple[int, int] = (1, 3)
    start_cell: tuple[int, int] = (3, 3)
    action_repeat: int = 2
    # policy steps: 1.1x the slowest expert episode (77; the environment's own limit, 300 simulator
    # steps = 150 policy steps, let a policy that bounces along the walls arrive late)
    max_steps: int = math.ceil(TIME_LIMIT_SLACK * SLOWEST_EXPERT_STEPS)
    kp: float = 10.0
    kd: float = 1.0
    switch_radius: float = 0.3
    env_id: str = "PointMaze_UMaze-v3"
    wall_row_y: float = 0.0  # y of the wall's row (cell row 2), where the mode is read


def plan_cells(maze: Any, start: tuple[int, int], goal: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """A shortest 4-connected cell path from ``start`` to ``goal``: distances by breadth-first search
    from the goal, then from each cell a uniformly random neighbour one step closer (ties broken
    at random, so every shortest path has positive probability)."""
    rows, cols = len(maze), len(maze[0])
    dist = {goal: 0}
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            n = (r + dr, c + dc)
            if 0 <= n[0] < rows and 0 <= n[1] < cols and maze[n[0]][n[1]] != 1 and n not in dist:
                dist[n] = dist[(r, c)] + 1
                queue.append(n)
    if start not in dist:
        raise ValueError(f"no path from {start} to {goal}")
    path, cur = [start], start
    while cur != goal:
        options = [(cur[0] + dr, cur[1] + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        options = [n for n in options if dist.get(n, -1) == dist[cur] - 1]
        cur = options[int(rng.integers(len(options)))]
        path.append(cur)
    return path


def corners(path: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The cells of ``path`` where its direction changes (its straight runs' ends)."""
    out = []
    for a, b, c in zip(path, path[1:], path[2:]):
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            out.append(b)
    return out


class PointMaze(Task):
    name: ClassVar[str] = "pointmaze"
    obs_dim: ClassVar[int] = 6  # x, y, vx, vy, goal x, goal y
    action_dim: ClassVar[int] = 2
    modes: ClassVar[tuple[str, ...]] = ("left", "right")
    collisions: ClassVar[bool] = False
    max_batch: ClassVar[int | None] = 100  # episodes stepped at once (one MuJoCo environment each)

    def __init__(self, config: PointMazeConfig | None = None) -> None:
        import gymnasium as gym
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
        self._gym = gym
        self.config = config or PointMazeConfig()
        self.max_steps = int(self.config.max_steps)
        self._pool: list[Any] = []

    def _envs(self, n: int) -> list[Any]:
        c = self.config
        while len(self._pool) < n:
            self._pool.append(self._gym.make(c.env_id, maze_map=[list(r) for r in c.maze], continuing_task=False,
                                             max_episode_steps=10 * c.max_steps * c.action_repeat).unwrapped)
        return self._pool[:n]

    def reset(self, n: int, generator: torch.Generator) -> EpisodeState:
        c = self.config
        seeds = torch.randint(2**31 - 1, (n,), generator=generator).tolist()
        envs = self._envs(n)
        obs = np.stack([self._flat(env.reset(seed=s, options={"goal_cell": np.array(c.goal_cell),
                                                              "reset_cell": np.array(c.start_cell)})[0])
                        for env, s in zip(envs, seeds)])
        obs_t = torch.as_tensor(obs, dtype=torch.float64)
        false = torch.zeros(n, dtype=torch.bool)
        return EpisodeState(data={"obs": obs_t, "pos": obs_t[:, :2].clone()}, t=torch.zeros(n, dtype=torch.long),
                            done=false.clone(), success=false.clone(), collision=false.clone(),
                            mode=torch.full((n,), -1, dtype=torch.long), path=[obs_t[:, :2].clone()], handles=envs)

    @staticmethod
    def _flat(obs: dict) -> np.ndarray:
        return np.concatenate([obs["observation"], obs["desired_goal"]])

    def observe(self, state: EpisodeState) -> torch.Tensor:
        return state.data["obs"].float()

    def step(self, state: EpisodeState, action: torch.Tensor) -> None:
        c = self.config
        a = action.detach().double().cpu().numpy().reshape(state.n, 2)
        obs = state.data["obs"].clone()
        for i in (~state.done).nonzero(as_tuple=True)[0].tolist():
            env = state.handles[i]
            for _ in range(c.action_repeat):
                o, _, terminated, _, info = env.step(np.clip(a[i], -1.0, 1.0))
                if info.get("success") or terminated:
                    state.success[i] = bool(info.get("success", terminated))
                    break
            obs[i] = torch.as_tensor(self._flat(o))
        old, new = state.data["pos"], obs[:, :2]
        active = ~state.done
        crossed = active & (old[:, 1] < c.wall_row_y) & (new[:, 1] >= c.wall_row_y) & (state.mode < 0)
        state.mode = torch.where(crossed, (new[:, 0] >= 0).long(), state.mode)
        state.data["obs"], state.data["pos"] = obs, new.clone()
        state.t = state.t + active.long()
        state.done |= state.success | (state.t >= self.max_steps)
        state.path.append(new.clone())

    def demos(self, n: int, generator: torch.Generator) -> Demos:
        """``n`` expert episodes, run ``max_batch`` at a time on the pool of environments."""
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        groups = [self._demo_group(min(self.max_batch, n - first), generator, rng) for first in range(0, n, self.max_batch)]
        longest = max(g.actions.shape[1] for g in groups)

        def pad(x: torch.Tensor, length: int) -> torch.Tensor:  # repeat the last observation
            extra = length - x.shape[1]
            return x if extra == 0 else torch.cat([x, x[:, -1:].expand(-1, extra, -1)], 1)

        obs = torch.cat([pad(g.obs, longest + 1) for g in groups])
        actions = torch.cat([torch.cat([g.actions, torch.zeros(g.actions.shape[0], longest - g.actions.shape[1], 2)], 1)
                             for g in groups])
        demos = Demos(obs=obs, actions=actions, lengths=torch.cat([g.lengths for g in groups]),
                      modes=torch.cat([g.modes for g in groups]))
        return demos

    def _demo_group(self, n: int, generator: torch.Generator, rng: np.random.Generator) -> Demos:
        c = self.config
        state = self.reset(n, generator)
        maze = self._pool[0].maze
        plans = []
        for i in range(n):
            path = plan_cells(c.maze, tuple(c.start_cell), tuple(c.goal_cell), rng)
            points = [maze.cell_rowcol_to_xy(np.array(cell)) for cell in corners(path)]
            points.append(state.data["obs"][i, 4:6].numpy())  # the goal itself
            plans.append((points, int(path[1][1] > c.start_cell[1])))
        index = [0] * n
        obs_seq, act_seq = [self.observe(state)], []
        for _ in range(self.max_steps):
            o = state.data["obs"].numpy()
            actions = np.zeros((n, 2))
            for i in range(n):
                if bool(state.done[i]):
                    continue
                points = plans[i][0]
                p, v = o[i, :2], o[i, 2:4]
                if index[i] < len(points) - 1 and np.linalg.norm(points[index[i]] - p) < c.switch_radius:
                    index[i] += 1
                actions[i] = np.clip(c.kp * (points[index[i]] - p) - c.kd * v, -1.0, 1.0)
            act = torch.as_tensor(actions, dtype=torch.float32)
            act_seq.append(act)
            self.step(state, act)
            obs_seq.append(self.observe(state))
            if bool(state.done.all()):
                break
        modes = torch.tensor([m for _, m in plans])
        keep = state.success.clone()
        if float(keep.double().mean()) < 0.95:
            raise RuntimeError(f"pointmaze expert succeeded in only {float(keep.double().mean()):.0%} of episodes")
        # the rare failure (stuck on a corner) is dropped rather than imitated
        return Demos(obs=torch.stack(obs_seq, 1)[keep], actions=torch.stack(act_seq, 1)[keep], lengths=state.t[keep],
                     modes=modes[keep])

    def draw_scene(self, ax: Any) -> None:
        import matplotlib.patches as patches

        c = self.config
        rows, cols = len(c.maze), len(c.maze[0])
        for r in range(rows):
            for col in range(cols):
                if c.maze[r][col] == 1:
                    x, y = col - cols / 2, rows / 2 - r - 1
                    ax.add_patch(patches.Rectangle((x, y), 1, 1, color="0.35", zorder=1))
        gx, gy = c.goal_cell[1] + 0.5 - cols / 2, rows / 2 - c.goal_cell[0] - 0.5
        ax.add_patch(patches.Circle((gx, gy), 0.45, color="tab:green", alpha=0.3, zorder=0))
        ax.set_xlim(-cols / 2, cols / 2)
        ax.set_ylim(-rows / 2, rows / 2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}
