"""What a policy task provides: a vectorised environment, a scripted expert and exact outcomes.

A task steps ``N`` episodes at once as tensors (so hundreds of rollouts cost one batched policy
call per action chunk), scores them exactly (success, collision, which mode of the
demonstrations the episode followed) and draws them. The rollout runner
(:mod:`distill_policy.rollout`) and the modality only use this interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

# Time limits: a task's max_steps is this many times its slowest expert demonstration, so a policy
# must arrive about as promptly as the demonstrations (docs/modalities/policy.md#time-limits)
TIME_LIMIT_SLACK = 1.1


@dataclass
class Demos:
    """Expert demonstrations, padded to the longest episode.

    ``obs [E, L + 1, obs_dim]`` (the observation before each action, and after the last),
    ``actions [E, L, action_dim]``, ``lengths [E]`` (actions actually taken; beyond them the
    observation repeats and the action is the task's hold action), ``modes [E]`` (index into
    ``Task.modes``: the mode the expert chose).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    lengths: torch.Tensor
    modes: torch.Tensor


@dataclass
class EpisodeState:
    """The state of ``N`` episodes. ``data`` holds the task's own tensors (positions, ...)."""

    data: dict[str, torch.Tensor]
    t: torch.Tensor  # steps taken [N]
    done: torch.Tensor  # [N] bool: success, collision or time-out
    success: torch.Tensor  # [N] bool
    collision: torch.Tensor  # [N] bool
    mode: torch.Tensor  # [N] long: index into Task.modes, -1 while undecided
    path: list[torch.Tensor] = field(default_factory=list)  # positions [N, 2] after each step (for plots)
    handles: Any = None  # per-episode objects of a task that wraps simulators (e.g. MuJoCo environments)

    @property
    def n(self) -> int:
        return int(self.t.shape[0])


class Task:
    """Base class of the policy tasks (see module docstring)."""

    name: ClassVar[str] = ""
    obs_dim: ClassVar[int]
    action_dim: ClassVar[int]
    modes: ClassVar[tuple[str, ...]] = ()
    collisions: ClassVar[bool] = True  # False: the task has no collision failures (solid walls)
    max_batch: ClassVar[int | None] = None  # most episodes stepped at once (None: all)
    max_steps: int

    def reset(self, n: int, generator: torch.Generator) -> EpisodeState:
        raise NotImplementedError

    def observe(self, state: EpisodeState) -> torch.Tensor:
        """Observations ``[N, obs_dim]`` (float32) of every episode."""
        raise NotImplementedError

    def step(self, state: EpisodeState, action: torch.Tensor) -> None:
        """Apply ``action [N, action_dim]`` to the episodes that are not done (in place)."""
        raise NotImplementedError

    def demos(self, n: int, generator: torch.Generator) -> Demos:
        raise NotImplementedError

    def hold_action(self) -> torch.Tensor:
        """The action that pads a demonstration after its end (the expert holds still)."""
        return torch.zeros(self.action_dim)

    def chunk_metrics(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, float]:
        """Open-loop checks of action chunks ``[B, H, action_dim]`` from the last observations ``[B, obs_dim]``
        (the field metrics of ``distill eval``; rollouts are the real test)."""
        return {}

    def draw_scene(self, ax: Any) -> None:
        """Draw the static scene (obstacles, goal region) on a matplotlib axis."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def save_figure(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
