"""di4c: the mixture likelihood and transition probabilities against closed forms, and what a
mixture over a shared latent can sample that a product cannot."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill import Denoiser
from distill.method import Batch, Roles
from distill.methods.di4c import Di4C, mixture_ancestral, mixture_log_likelihood, transition_log_probs
from distill.nets.embeddings import with_extra_inputs
from distill.process import MaskedProcess, UniformProcess, sampling_schedule
from tests.fixtures.token_plugin import L, V, ExactTokenNet, TinyTokens


def test_mixture_log_likelihood_is_the_log_of_the_mean():
    token_logp = torch.tensor([[[-1.0, -0.5]], [[-3.0, 0.0]]])  # R = 2, B = 1, L = 2
    expected = math.log(0.5 * (math.exp(-1.5) + math.exp(-3.0)))
    assert float(mixture_log_likelihood(token_logp)[0]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("process", [MaskedProcess(V), UniformProcess(V)], ids=["masked", "uniform"])
def test_transition_log_probs_follow_the_posterior(process):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, L, V, generator=g), -1)
    x_t = process.prior((4, L), generator=g)
    x_s = torch.randint(V, (4, L), generator=g)
    t, s = torch.full((4,), 0.8), torch.full((4,), 0.3)
    out = transition_log_probs(process, x_t, probs, x_s, t, s)
    post = process.posterior(x_t, probs.double(), t.double(), s.double())
    assert torch.allclose(out.double(), post.gather(-1, x_s.unsqueeze(-1)).squeeze(-1).log(), atol=1e-5)


class TwoModes(nn.Module):
    """x0 distribution that is one-hot on (0, 0, 1) for lam < 1/2 and on (1, 1, 2) otherwise."""

    def forward(self, x, t, cond=None, lam=None):
        a = torch.tensor([0, 0, 1])
        b = torch.tensor([1, 1, 2])
        seq = torch.where((lam < 0.5)[:, None], a, b)
        return torch.nn.functional.one_hot(seq, V).float() * 40.0


def test_a_shared_latent_samples_correlated_tokens_in_one_step():
    p = MaskedProcess(V)
    student = Denoiser(TwoModes(), p, prediction="logits")
    out = mixture_ancestral(student, p.prior((2000, L)), timesteps=sampling_schedule(p, 1),
                            generator=torch.Generator().manual_seed(0)).x0
    rows = {tuple(r) for r in out.tolist()}
    assert rows == {(0, 0, 1), (1, 1, 2)}  # only the two modes: every draw is jointly consistent
    share = float((out[:, 0] == 0).double().mean())
    assert abs(share - 0.5) < 5 * math.sqrt(0.25 / 2000)
    # a product of the same marginals would mix modes: (0, 1, 2) etc. would make up half the draws


def test_loss_is_the_revealed_tokens_cross_entropy_for_one_component():
    """R = 1 and a student that ignores lam: the mixture NLL is the cross-entropy of the tokens
    the teacher revealed, per token of the sequence."""
    p = MaskedProcess(V)
    teacher = Denoiser(ExactTokenNet(p), p, prediction="logits")
    net = with_extra_inputs(TinyTokens().build_network("student"), ("lam",))
    student = Denoiser(net, p, prediction="logits")
    m = Di4C(Di4C.Options(teacher_steps=8, components=1))
    m.student_steps = 2
    m.setup(Roles({"teacher": teacher, "student": student}), TinyTokens())
    g = torch.Generator().manual_seed(0)
    x0 = TinyTokens().sample_data(64, g).x0
    loss = m.loss("student", Batch(noise=torch.randn(64, L), x0=x0, generator=torch.Generator().manual_seed(1)),
                  Roles({"teacher": teacher, "student": student}))
    # a fresh student predicts uniform: each revealed token costs log V
    value = float(loss.total.detach())
    assert 0 < value <= math.log(V) + 1e-6
    revealed = value / math.log(V) * L * 64  # the loss is (tokens revealed) * log V / (B L)
    assert abs(revealed - round(revealed)) < 1e-3
