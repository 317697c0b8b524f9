"""distill_policy.normalizer: min-max scaling to [-1, 1], saved with the model."""
from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill_policy.normalizer import Normalizer


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(200, 2, 3, generator=g) * torch.tensor([1.0, 5.0, 0.0]) + torch.tensor([0.0, 2.0, 7.0])
    actions = torch.rand(200, 8, 2, generator=g) * 0.1 - 0.05
    return obs, actions


def test_data_map_onto_the_unit_box_and_back():
    obs, actions = _data()
    norm = Normalizer(3, 2).fit(obs, actions)
    n_obs, n_act = norm.normalize_obs(obs), norm.normalize_action(actions)
    # min and max of each varying dimension land exactly on -1 and +1 (float32 round-off)
    for x in (n_obs[..., :2].reshape(-1, 2), n_act.reshape(-1, 2)):
        torch.testing.assert_close(x.min(0).values, -torch.ones(2), atol=1e-6, rtol=0)
        torch.testing.assert_close(x.max(0).values, torch.ones(2), atol=1e-6, rtol=0)
    # the constant third observation (range 0) is centred, not divided by 0
    assert torch.equal(n_obs[..., 2], torch.zeros_like(n_obs[..., 2]))
    torch.testing.assert_close(norm.unnormalize_obs(n_obs), obs, atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.unnormalize_action(n_act), actions, atol=1e-7, rtol=0)


def test_statistics_are_buffers_in_the_state_dict():
    obs, actions = _data()
    norm = Normalizer(3, 2).fit(obs, actions)
    assert set(norm.state_dict()) == {"obs_min", "obs_max", "action_min", "action_max"}
    other = Normalizer(3, 2)
    other.load_state_dict(norm.state_dict())
    assert other.matches(norm) and other.fitted


def test_unfitted_and_mismatched_use_fails_clearly():
    norm = Normalizer(3, 2)
    assert not norm.fitted
    with pytest.raises(DistillError, match="no statistics"):
        norm.normalize_obs(torch.zeros(1, 3))
    obs, actions = _data()
    norm.fit(obs, actions)
    with pytest.raises(DistillError, match="observations of dimension 4.*trained on 3-dimensional"):
        norm.normalize_obs(torch.zeros(1, 4))
    with pytest.raises(DistillError, match="4-D observations"):
        Normalizer(4, 2).fit(obs, actions)
