"""distill_policy.data: demonstrations cut into (observation history, action chunk) samples."""
from __future__ import annotations

import torch

from distill_policy.data import make_chunks
from distill_policy.tasks.base import Demos


def test_padding_rules_at_both_ends():
    # one episode of 3 actions, observations numbered by step, actions numbered 10, 11, 12
    obs = torch.arange(4.0).reshape(1, 4, 1).expand(1, 4, 1).clone()
    actions = torch.tensor([[[10.0], [11.0], [12.0]]])
    demos = Demos(obs=obs, actions=actions, lengths=torch.tensor([3]), modes=torch.tensor([1]))
    chunks = make_chunks(demos, n_obs_steps=2, horizon=4, hold_action=torch.tensor([0.0]))
    assert len(chunks) == 3  # one sample per action taken
    # histories: o_{t-1}, o_t with o_0 repeated before the start
    assert chunks.obs[:, :, 0].tolist() == [[0, 0], [0, 1], [1, 2]]
    # chunks: a_t .. a_{t+3}, the hold action after the episode's end
    assert chunks.actions[:, :, 0].tolist() == [[10, 11, 12, 0], [11, 12, 0, 0], [12, 0, 0, 0]]
    assert chunks.modes.tolist() == [1, 1, 1] and chunks.episodes.tolist() == [0, 0, 0]


def test_episodes_of_different_lengths_do_not_mix():
    obs = torch.zeros(2, 4, 1)
    obs[1] = 5.0
    actions = torch.tensor([[[1.0], [1.0], [9.0]], [[2.0], [2.0], [2.0]]])  # episode 0 ends after 2 actions
    demos = Demos(obs=obs, actions=actions, lengths=torch.tensor([2, 3]), modes=torch.tensor([0, 1]))
    chunks = make_chunks(demos, n_obs_steps=1, horizon=3, hold_action=torch.tensor([-1.0]))
    assert len(chunks) == 5
    first = chunks.actions[chunks.episodes == 0][:, :, 0].tolist()
    assert first == [[1, 1, -1], [1, -1, -1]]  # the padding value 9 beyond the end is never read
    assert (chunks.obs[chunks.episodes == 1] == 5.0).all()
