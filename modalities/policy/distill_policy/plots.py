"""Pictures: action chunks drawn from where they start, and rollout trajectories."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from distill_policy.rollout import RolloutResult
from distill_policy.tasks.base import Task, save_figure


def _axes(n: int, title: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.9), squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, list(axes[0])


def draw_chunks(task: Task, ax, obs: torch.Tensor, actions: torch.Tensor, max_chunks: int = 64) -> None:
    """Each chunk's open-loop path from its last observed position (first ``max_chunks``)."""
    task.draw_scene(ax)
    pos = obs[:max_chunks, -1, :2].double()
    steps = actions[:max_chunks].double()
    points = torch.cat([pos.unsqueeze(1), pos.unsqueeze(1) + steps.cumsum(1)], 1)
    for path in points:
        ax.plot(path[:, 0], path[:, 1], lw=0.8, alpha=0.7)
        ax.scatter(path[:1, 0], path[:1, 1], s=6, color="k", zorder=3)


def save_chunk_panels(task: Task, panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: Path,
                      title: str | None = None, max_chunks: int = 64) -> Path:
    """Panels ``{label: (obs [B, T_o, obs_dim], actions [B, H, A])}`` in task units, side by side."""
    fig, axes = _axes(len(panels), title)
    for ax, (label, (obs, actions)) in zip(axes, panels.items()):
        draw_chunks(task, ax, obs, actions, max_chunks)
        ax.set_title(label, fontsize=9)
    return save_figure(fig, Path(path))


def draw_rollouts(task: Task, ax, result: RolloutResult, max_episodes: int = 100) -> None:
    """Trajectories coloured by outcome: green success, red collision, grey time-out."""
    task.draw_scene(ax)
    for i in range(min(result.n, max_episodes)):
        steps = int(result.steps[i])
        path = result.paths[i, : steps + 1]
        colour = "tab:green" if bool(result.success[i]) else ("tab:red" if bool(result.collision[i]) else "0.5")
        ax.plot(path[:, 0], path[:, 1], color=colour, lw=0.7, alpha=0.6)


def save_rollout_panels(task: Task, panels: Mapping[str, RolloutResult], path: Path, title: str | None = None,
                        max_episodes: int = 100) -> Path:
    """One panel per policy: its rollouts from the same starts (same seed), labelled with the success rate."""
    fig, axes = _axes(len(panels), title)
    for ax, (label, result) in zip(axes, panels.items()):
        draw_rollouts(task, ax, result, max_episodes)
        s = result.summary()
        modes = ", ".join(f"{k} {v:.0%}" for k, v in s["mode_fractions"].items())
        crash = "" if s["collision"] is None else f", collision {s['collision']:.0%}"
        ax.set_title(f"{label}\nsuccess {s['success']:.0%}{crash}\n{modes}", fontsize=8)
    return save_figure(fig, Path(path))
