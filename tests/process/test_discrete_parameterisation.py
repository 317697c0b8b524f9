"""Discrete-process helpers for token Denoisers: SUBS log-probabilities, prior from noise, alpha'."""
from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.process import MaskedProcess, UniformProcess

F64 = torch.float64


def test_subs_carries_over_unmasked_tokens_and_never_predicts_the_mask():
    p = MaskedProcess(4)
    logits = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    x_t = torch.tensor([[4, 1, 4, 3, 0], [4, 4, 4, 4, 4]])
    logp = p.x0_log_probs(logits, x_t)
    probs = logp.exp()
    assert probs.shape == (2, 5, 4)  # no mask column: the mask has probability zero
    assert torch.allclose(probs.sum(-1), torch.ones(2, 5))
    kept = x_t != 4
    # carry-over: a kept token is its own x0 with probability exactly 1
    assert torch.equal(probs[kept], torch.nn.functional.one_hot(x_t[kept], 4).float())
    # masked positions: the softmax of the network's logits
    assert torch.allclose(probs[~kept], torch.softmax(logits[~kept], -1), atol=1e-6)


def test_uniform_x0_log_probs_is_the_softmax_everywhere():
    p = UniformProcess(4)
    logits = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    x_t = torch.randint(4, (3, 2), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(p.x0_log_probs(logits, x_t), torch.log_softmax(logits, -1))


def test_logits_of_the_wrong_width_are_refused():
    with pytest.raises(DistillError, match="vocab_size=4"):
        MaskedProcess(4).x0_log_probs(torch.zeros(1, 2, 5), torch.zeros(1, 2, dtype=torch.long))


def test_prior_from_noise():
    noise = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0))
    masked = MaskedProcess(5).prior_from_noise(noise)
    assert masked.dtype == torch.long and bool((masked == 5).all())
    uniform = UniformProcess(5).prior_from_noise(noise)
    assert torch.equal(uniform, UniformProcess(5).prior_from_noise(noise))  # a function of the noise
    freq = torch.bincount(uniform.flatten(), minlength=5).double() / uniform.numel()
    se = math.sqrt(0.2 * 0.8 / uniform.numel())
    assert bool(((freq - 0.2).abs() < 5 * se).all()), freq  # Phi(z) is uniform: each token 1/V


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_d_alpha_matches_finite_differences_and_t_at_alpha_inverts(schedule):
    p = MaskedProcess(3, schedule)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    h = 1e-6
    numeric = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    assert torch.allclose(p.d_alpha(t), numeric, atol=1e-8)
    assert torch.allclose(p.t_at_alpha(p.alpha(t)), t, atol=1e-12)
