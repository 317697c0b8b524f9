"""Policy tasks by name: ``two_route`` (written here) and ``pointmaze`` (gymnasium-robotics, MuJoCo)."""
from __future__ import annotations

import difflib
import importlib

from distill.errors import DistillError
from distill_policy.tasks.base import Demos, EpisodeState, Task

# name -> (module, class); pointmaze imports gymnasium-robotics only when chosen
TASKS: dict[str, tuple[str, str]] = {
    "two_route": ("distill_policy.tasks.two_route", "TwoRoute"),
    "pointmaze": ("distill_policy.tasks.pointmaze", "PointMaze"),
}


def make_task(name: str) -> Task:
    """The task ``name`` with its default configuration."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DistillError(f"unknown policy task {name!r}{hint} (choose from {', '.join(TASKS)})")
    module, cls = TASKS[name]
    try:
        return getattr(importlib.import_module(module), cls)()
    except ModuleNotFoundError as error:
        raise DistillError(
            f"policy task {name!r} needs {error.name!r}, which is not installed; "
            "pip install 'distill-plugin-policy[pointmaze]' (gymnasium-robotics and mujoco)"
        ) from None


__all__ = ["Demos", "EpisodeState", "TASKS", "Task", "make_task"]
