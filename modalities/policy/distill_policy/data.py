"""Demonstrations cut into training samples: (observation history, action chunk) pairs.

Chi et al. 2023 (Diffusion Policy, Sec. III-B "closed-loop action-sequence prediction"): at
step ``t`` the policy sees the last ``n_obs_steps`` observations ``o_{t-T_o+1} .. o_t`` and
predicts the next ``horizon`` actions ``a_t .. a_{t+H-1}``, of which the first
``n_action_steps`` are executed before it plans again. Every step of every demonstration
gives one sample; observations before the first step repeat ``o_0`` and actions after the
episode's end are the task's hold action (the expert stays at the goal), as Chi et al. pad
sequences at episode boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_policy.tasks.base import Demos


@dataclass
class ChunkDataset:
    """Training samples in task units: ``obs [M, n_obs_steps, obs_dim]``, ``actions [M, horizon,
    action_dim]``, the demonstration's mode ``modes [M]`` and its index ``episodes [M]``."""

    obs: torch.Tensor
    actions: torch.Tensor
    modes: torch.Tensor
    episodes: torch.Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def make_chunks(demos: Demos, n_obs_steps: int, horizon: int, hold_action: torch.Tensor) -> ChunkDataset:
    """One sample per (episode, step) with the padding rules of the module docstring (vectorised)."""
    e_count, steps = demos.actions.shape[:2]
    grid = torch.arange(steps)
    valid = grid.unsqueeze(0) < demos.lengths.unsqueeze(1)  # [E, L]
    episode, t = valid.nonzero(as_tuple=True)
    obs_index = (t.unsqueeze(1) + torch.arange(-n_obs_steps + 1, 1)).clamp(min=0)  # [M, T_o]
    obs = demos.obs[episode.unsqueeze(1), obs_index]
    act_index = t.unsqueeze(1) + torch.arange(horizon)  # [M, H]
    inside = act_index < demos.lengths[episode].unsqueeze(1)
    actions = demos.actions[episode.unsqueeze(1), act_index.clamp(max=steps - 1)]
    actions = torch.where(inside.unsqueeze(-1), actions, hold_action.to(actions))
    return ChunkDataset(obs=obs.float(), actions=actions.float(), modes=demos.modes[episode], episodes=episode)
