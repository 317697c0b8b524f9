"""``two_route``: reach a goal past a round obstacle, on the left or on the right.

The multimodal navigation task of the diffusion-policy literature (Chi et al. 2023, Sec. IV,
"multi-modal action distributions": a policy must commit to one of two equally good routes,
not average them into the obstacle), written here so that success is exact and cheap.

Scene (``[-1, 1]^2``): the agent starts at ``(U[-s, s], start_y)``, the goal is
``(U[-s, s], goal_y)``, a disc of radius ``r`` sits at ``obstacle`` between them. The
demonstrations start anywhere in ``s = spread``; evaluation episodes start near the centre line,
``s = eval_spread``: from an off-centre start, the conditional *mean* of the routes already leans
to the nearer side once the agent has moved, so a mode-averaging policy would pass there. Dynamics: the
action is the displacement of one step; it is clipped to length ``max_speed`` and the position
to the square. Observation: ``(x, y, goal_x, goal_y)``.

Outcome of an episode (exact, per step): **collision** when the segment travelled in a step
passes within ``r`` of the obstacle's centre (the episode ends, failed); **success** when the
agent is within ``goal_tol`` of the goal with no collision; **time-out** after ``max_steps``, which is
1.1x the slowest expert path (:meth:`TwoRoute.slowest_expert_steps`): a policy must arrive about as
promptly as the demonstrations, so one that zig-zags to the goal at the speed limit (the clipped
noise of a one-step DDIM teacher does) fails instead of arriving late.
**Mode**: the side of the obstacle (``left`` if ``x < obstacle_x``) at the first step that
crosses the obstacle's row ``y = obstacle_y``.

Scripted expert: picks left or right with probability 1/2 each (independently of the start,
so the demonstrations are multimodal everywhere below the obstacle), a waypoint beside the
obstacle at lateral offset ``U[waypoint_offset]`` and height ``obstacle_y + U[-0.05, 0.05]``,
and a speed ``U[expert_speed]``; it moves straight to the waypoint and then straight to the
goal, ``min(speed, distance)`` per step, and stops there. With the defaults every expert path
clears the obstacle by more than 0.06 (``clearance_bound``, checked in ``tests/test_policy_two_route.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from distill_policy.tasks.base import Demos, EpisodeState, Task


@dataclass(frozen=True)
class TwoRouteConfig:
    obstacle: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.25
    start_y: float = -0.8
    goal_y: float = 0.8
    spread: float = 0.25  # demonstrations: start and goal x ~ U[-spread, spread]
    eval_spread: float = 0.05  # rollouts: start x ~ U[-eval_spread, eval_spread] (goal x as in the demonstrations)
    max_speed: float = 0.06  # longest step the environment executes
    expert_speed: tuple[float, float] = (0.04, 0.05)
    waypoint_offset: tuple[float, float] = (0.45, 0.55)
    goal_tol: float = 0.06
    max_steps: int = 63  # ceil(tasks.base.TIME_LIMIT_SLACK x slowest_expert_steps()) = ceil(1.1 x 57)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def segment_distance(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Distance from point ``c [2]`` to the segments ``a -> b`` (``[..., 2]``): the closest point is
    ``a + clamp(<c - a, b - a> / |b - a|^2, 0, 1) (b - a)``."""
    d = b - a
    denom = (d * d).sum(-1).clamp_min(1e-18)
    u = (((c - a) * d).sum(-1) / denom).clamp(0.0, 1.0)
    return (a + u.unsqueeze(-1) * d - c).norm(dim=-1)


class TwoRoute(Task):
    name: ClassVar[str] = "two_route"
    obs_dim: ClassVar[int] = 4
    action_dim: ClassVar[int] = 2
    modes: ClassVar[tuple[str, ...]] = ("left", "right")

    def __init__(self, config: TwoRouteConfig | None = None) -> None:
        self.config = config or TwoRouteConfig()
        self.max_steps = int(self.config.max_steps)
        self._centre = torch.tensor(self.config.obstacle, dtype=torch.float64)

    # --- environment ---------------------------------------------------------------------
    def reset(self, n: int, generator: torch.Generator, start_spread: float | None = None) -> EpisodeState:
        """Evaluation episodes start near the centre line (``eval_spread``), where nothing in the
        observation hints at a route; ``start_spread`` overrides it (the demonstrations use ``spread``)."""
        c = self.config
        lo = c.eval_spread if start_spread is None else start_spread
        start = torch.stack([_uniform(n, -lo, lo, generator), torch.full((n,), c.start_y, dtype=torch.float64)], 1)
        goal = torch.stack([_uniform(n, -c.spread, c.spread, generator), torch.full((n,), c.goal_y, dtype=torch.float64)], 1)
        false = torch.zeros(n, dtype=torch.bool)
        return EpisodeState(data={"pos": start, "goal": goal}, t=torch.zeros(n, dtype=torch.long), done=false.clone(),
                            success=false.clone(), collision=false.clone(), mode=torch.full((n,), -1, dtype=torch.long),
                            path=[start.clone()])

    def observe(self, state: EpisodeState) -> torch.Tensor:
        return torch.cat([state.data["pos"], state.data["goal"]], dim=1).float()

    def step(self, state: EpisodeState, action: torch.Tensor) -> None:
        c = self.config
        active = ~state.done
        a = action.to(torch.float64).reshape(state.n, 2)
        length = a.norm(dim=1, keepdim=True)
        a = torch.where(length > c.max_speed, a * (c.max_speed / length.clamp_min(1e-12)), a)
        a = torch.where(active.unsqueeze(1), a, torch.zeros_like(a))
        old = state.data["pos"]
        new = (old + a).clamp(-1.0, 1.0)
        hit = active & (segment_distance(old, new, self._centre) < c.radius)
        oy, ox = self._centre[1], self._centre[0]
        crossed = active & (old[:, 1] < oy) & (new[:, 1] >= oy) & (state.mode < 0)
        # the x where the step crosses the row y = oy
        frac = ((oy - old[:, 1]) / (new[:, 1] - old[:, 1]).clamp_min(1e-12)).clamp(0, 1)
        x_cross = old[:, 0] + frac * (new[:, 0] - old[:, 0])
        state.mode = torch.where(crossed, (x_cross >= ox).long(), state.mode)
        state.data["pos"] = new
        state.t = state.t + active.long()
        reached = active & ~hit & ((new - state.data["goal"]).norm(dim=1) < c.goal_tol)
        state.collision |= hit
        state.success |= reached
        state.done |= hit | reached | (state.t >= self.max_steps)
        state.path.append(new.clone())

    # --- expert -------------------------------------------------------------------------
    def demos(self, n: int, generator: torch.Generator) -> Demos:
        c = self.config
        state = self.reset(n, generator, start_spread=c.spread)
        mode = torch.randint(2, (n,), generator=generator)
        side = (2 * mode - 1).to(torch.float64)  # left = -1, right = +1
        waypoint = torch.stack([self._centre[0] + side * _uniform(n, *c.waypoint_offset, generator),
                                self._centre[1] + _uniform(n, -0.05, 0.05, generator)], 1)
        speed = _uniform(n, *c.expert_speed, generator).unsqueeze(1)
        to_goal = torch.zeros(n, dtype=torch.bool)
        obs, actions = [self.observe(state)], []
        for _ in range(self.max_steps):
            pos = state.data["pos"]
            to_goal |= (waypoint - pos).norm(dim=1) < 1e-9
            target = torch.where(to_goal.unsqueeze(1), state.data["goal"], waypoint)
            delta = target - pos
            dist = delta.norm(dim=1, keepdim=True)
            step = delta / dist.clamp_min(1e-12) * torch.minimum(speed, dist)
            step = torch.where(state.done.unsqueeze(1), torch.zeros_like(step), step)
            actions.append(step.float())
            self.step(state, step)
            obs.append(self.observe(state))
            if bool(state.done.all()):
                break
        if not bool(state.success.all()):
            raise RuntimeError("two_route expert failed an episode; the scene constants are inconsistent")
        return Demos(obs=torch.stack(obs, 1), actions=torch.stack(actions, 1), lengths=state.t.clone(), modes=mode)

    # --- open-loop chunk checks ----------------------------------------------------------
    def chunk_metrics(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, float]:
        """Executes each chunk open-loop from its observation: ``chunk_collision`` (share of chunks
        whose path hits the obstacle) and ``chunk_left_fraction`` (of the chunks that start below
        the obstacle, the share moving left)."""
        c = self.config
        pos = obs[:, :2].to(torch.float64)
        a = actions.to(torch.float64)
        length = a.norm(dim=-1, keepdim=True)
        a = torch.where(length > c.max_speed, a * (c.max_speed / length.clamp_min(1e-12)), a)
        points = torch.cat([pos.unsqueeze(1), pos.unsqueeze(1) + a.cumsum(1)], 1)
        dist = segment_distance(points[:, :-1], points[:, 1:], self._centre)
        collide = (dist < c.radius).any(1)
        below = pos[:, 1] < self._centre[1] - c.radius
        left = (points[:, -1, 0] < pos[:, 0]) & below
        out = {"chunk_collision": float(collide.double().mean())}
        if bool(below.any()):
            out["chunk_left_fraction"] = float(left.sum() / below.sum())
        return out

    # --- pictures ------------------------------------------------------------------------
    def draw_scene(self, ax: Any) -> None:
        import matplotlib.patches as patches

        c = self.config
        ax.add_patch(patches.Circle(c.obstacle, c.radius, color="0.35", zorder=1))
        ax.plot([-c.spread, c.spread], [c.goal_y, c.goal_y], color="tab:green", lw=6, alpha=0.35, zorder=0)
        ax.plot([-c.spread, c.spread], [c.start_y, c.start_y], color="tab:blue", lw=6, alpha=0.25, zorder=0)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}

    def _corner_paths(self) -> list[tuple[tuple[float, float], tuple[float, float], tuple[float, float]]]:
        """The expert's (start, waypoint, goal) at every corner of the start, waypoint (either side)
        and goal ranges: the extremes of its straight two-leg paths."""
        c = self.config
        return [((sx, c.start_y), (c.obstacle[0] + side * off, c.obstacle[1] + wy), (gx, c.goal_y))
                for sx in (-c.spread, c.spread) for off in c.waypoint_offset for side in (-1.0, 1.0)
                for wy in (-0.05, 0.05) for gx in (-c.spread, c.spread)]

    def slowest_expert_steps(self) -> int:
        """Steps of the longest expert episode: the longest corner path at the slowest expert
        speed (the last step may be shorter than the others, hence the ceiling)."""
        longest = max(math.dist(a, w) + math.dist(w, g) for a, w, g in self._corner_paths())
        return math.ceil(longest / self.config.expert_speed[0])

    def clearance_bound(self) -> float:
        """A lower bound of how far expert paths stay from the obstacle's centre (for the tests):
        the distance of the centre to the straight legs start -> waypoint -> goal in the worst corner."""
        worst = math.inf
        for a, w, g in self._corner_paths():
            a, w, g = (torch.tensor(p, dtype=torch.float64) for p in (a, w, g))
            worst = min(worst, float(segment_distance(a, w, self._centre)), float(segment_distance(w, g, self._centre)))
        return worst
