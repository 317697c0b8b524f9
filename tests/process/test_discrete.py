"""Discrete processes: corruption marginals, exact posteriors (against brute-force Bayes), ancestral step."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.errors import DistillError
from distill.process import MaskedProcess, UniformProcess, make_process

SETTINGS = settings(max_examples=50, deadline=None)
F64 = torch.float64
PROCESSES = [MaskedProcess(6), MaskedProcess(6, "cosine"), UniformProcess(6), UniformProcess(6, "cosine")]
each_process = pytest.mark.parametrize("p", PROCESSES, ids=lambda p: f"{p.name}-{p.schedule}")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within(freq: torch.Tensor, prob: torch.Tensor, n: int) -> None:
    """Empirical frequencies within 5 binomial standard errors (plus a hair for p = 0 or 1)."""
    se = torch.sqrt(prob * (1 - prob) / n)
    assert bool(((freq - prob).abs() <= 5 * se + 1e-12).all()), (freq, prob)


def transition(p, a: float) -> torch.Tensor:
    """Q[i, j] = q(x_t = j | x_0 = i) for keep probability a (D3PM eq. 1), over input_vocab_size states."""
    V, n = p.vocab_size, p.input_vocab_size
    if isinstance(p, MaskedProcess):
        Q = a * torch.eye(n, dtype=F64)
        Q[:, p.mask_id] += 1 - a
        Q[p.mask_id, p.mask_id] = 1.0
        return Q
    return a * torch.eye(n, dtype=F64) + (1 - a) / V


def brute_force_posterior(p, x_t: int, x0_probs: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """sum_x0 p(x0) q(x_s | x_t, x0) by Bayes on the transition matrices (D3PM eq. 3)."""
    a_t, a_s = float(p.alpha(torch.tensor(t, dtype=F64))), float(p.alpha(torch.tensor(s, dtype=F64)))
    Q_s, Q_ts = transition(p, a_s), transition(p, a_t / a_s)
    out = torch.zeros(p.input_vocab_size, dtype=F64)
    for x0 in range(p.vocab_size):
        joint = Q_s[x0] * Q_ts[:, x_t]  # q(x_s | x0) q(x_t | x_s)
        if joint.sum() > 0:
            out += x0_probs[x0] * joint / joint.sum()
    return out


probs = st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6).filter(lambda v: sum(v) > 1e-3)
ts = st.tuples(st.floats(0.02, 0.98), st.floats(0.0, 1.0))  # at t = 1 an unmasked x_t is impossible


@each_process
@SETTINGS
@given(w=probs, ts=ts, x_t=st.integers(0, 6))
def test_posterior_matches_bayes_and_sums_to_one(p, w, ts, x_t):
    x_t = min(x_t, p.input_vocab_size - 1)
    t, s = ts[0], ts[0] * ts[1] * 0.999
    x0_probs = torch.tensor(w, dtype=F64) / sum(w)
    consistent = x0_probs
    if isinstance(p, MaskedProcess) and x_t != p.mask_id:  # an unmasked token is x0: carried over whatever x0_probs says
        consistent = torch.nn.functional.one_hot(torch.tensor(x_t), p.vocab_size).to(F64)
    post = p.posterior(torch.tensor([[x_t]]), x0_probs[None, None], torch.tensor([t], dtype=F64), torch.tensor([s], dtype=F64))
    assert post.shape == (1, 1, p.input_vocab_size) and post.dtype == F64
    torch.testing.assert_close(post.sum(-1), torch.ones(1, 1, dtype=F64), rtol=0, atol=1e-12)
    assert bool((post >= 0).all())
    torch.testing.assert_close(post[0, 0], brute_force_posterior(p, x_t, consistent, t, s), rtol=1e-9, atol=1e-12)


@each_process
def test_posterior_at_s0_is_x0_distribution(p):
    x0_probs = torch.softmax(torch.randn(2, 5, 6, generator=gen(), dtype=F64), -1)
    x_t = p.prior((2, 5), generator=gen(1))
    post = p.posterior(x_t, x0_probs, torch.tensor([0.7, 0.3], dtype=F64), torch.zeros(2, dtype=F64))
    torch.testing.assert_close(post[..., : p.vocab_size], x0_probs, rtol=0, atol=1e-12)


def test_masked_posterior_carries_unmasked_tokens():
    p = MaskedProcess(6)
    x_t = torch.tensor([[0, 6, 3, 6, 5]])
    x0_probs = torch.softmax(torch.randn(1, 5, 6, generator=gen(), dtype=F64), -1)
    post = p.posterior(x_t, x0_probs, 0.8, 0.3)
    for i in (0, 2, 4):
        assert torch.equal(post[0, i], torch.nn.functional.one_hot(x_t[0, i], 7).to(F64))
    torch.testing.assert_close(post[0, 1, 6], torch.tensor((1 - 0.7) / (1 - 0.2), dtype=F64))  # MDLM: (1-a_s)/(1-a_t)
    x_s = p.step(x_t.expand(500, 5), x0_probs.expand(500, 5, 6), 0.8, 0.3, generator=gen())
    assert bool((x_s[:, [0, 2, 4]] == x_t[0, [0, 2, 4]]).all())


@each_process
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_corrupt_marginals(p, t):
    n, V = 40000, p.vocab_size
    x0 = torch.randint(V, (2, n // 2), generator=gen())
    x_t = p.corrupt(x0, torch.full((2,), t), generator=gen(1))
    assert x_t.shape == x0.shape and x_t.dtype == x0.dtype
    a = float(p.alpha(torch.tensor(t, dtype=F64)))
    same = (x_t == x0).double().mean()
    if isinstance(p, MaskedProcess):
        within(same, torch.tensor(a, dtype=F64), n)
        assert bool(((x_t == x0) | (x_t == p.mask_id)).all())
    else:
        within(same, torch.tensor(a + (1 - a) / V, dtype=F64), n)
        changed = x_t[x_t != x0]  # uniform over the other V - 1 tokens relative to x0, and over all V overall
        assert bool(((changed >= 0) & (changed < V)).all())
        hist = torch.bincount(x_t[x0 == 0], minlength=V).double()
        m = int((x0 == 0).sum())
        expected = torch.full((V,), (1 - a) / V, dtype=F64)
        expected[0] += a
        within(hist / m, expected, m)


def test_corrupt_uses_per_row_time():
    p = MaskedProcess(4)
    x_t = p.corrupt(torch.zeros(2, 1000, dtype=torch.long), torch.tensor([0.0, 1.0]), generator=gen())
    assert bool((x_t[0] == 0).all()) and bool((x_t[1] == p.mask_id).all())


@each_process
def test_step_samples_from_posterior(p):
    n = 40000
    x_t = torch.full((1, n), p.input_vocab_size - 1)  # the mask for masked, token 5 for uniform
    x0_probs = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.0, 0.5], dtype=F64).expand(1, n, 6)
    t, s = torch.tensor([0.7]), torch.tensor([0.4])
    x_s = p.step(x_t, x0_probs, t, s, generator=gen())
    assert x_s.shape == x_t.shape and x_s.dtype == torch.long
    freq = torch.bincount(x_s.flatten(), minlength=p.input_vocab_size).double() / n
    within(freq, p.posterior(x_t[:, :1], x0_probs[:, :1], t, s)[0, 0], n)


def test_posterior_keeps_dtype_and_checks_classes():
    p = MaskedProcess(6)
    out = p.posterior(torch.tensor([[6]]), torch.full((1, 1, 6), 1 / 6), 0.5, 0.2)
    assert out.dtype == torch.float32
    with pytest.raises(DistillError, match="expected vocab_size=6"):
        p.posterior(torch.tensor([[6]]), torch.full((1, 1, 7), 1 / 7), 0.5, 0.2)


def test_alpha_schedules_and_prior():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(MaskedProcess(4).alpha(t), 1 - t)
    torch.testing.assert_close(UniformProcess(4, "cosine").alpha(t), torch.cos(math.pi / 2 * t))
    assert bool((MaskedProcess(4).prior((2, 3)) == 4).all())
    x = UniformProcess(4).prior((2, 3), generator=gen())
    assert x.shape == (2, 3) and bool(((x >= 0) & (x < 4)).all())
    assert MaskedProcess(4).input_vocab_size == 5 and UniformProcess(4).input_vocab_size == 4


@each_process
def test_describe_round_trips(p):
    assert make_process(**json.loads(json.dumps(p.describe()))) == p


def test_bad_arguments():
    with pytest.raises(DistillError, match="did you mean 'cosine'"):
        MaskedProcess(4, "cosin")
    with pytest.raises(DistillError, match="vocab_size must be an integer >= 2"):
        UniformProcess(1)
    with pytest.raises(DistillError, match="did you mean 'masked'"):
        make_process("maskd", vocab_size=3)
