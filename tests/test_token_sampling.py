"""Token Denoisers and the ancestral sampler, against the exact denoiser of tests.fixtures.token_plugin."""
from __future__ import annotations

import pytest
import torch

from distill import Denoiser
from distill.errors import DistillError
from distill.evaluation import teacher_sample_fn
from distill.process import MaskedProcess, UniformProcess, make_process, sampling_schedule
from distill.report import teacher_settings
from distill.samplers import ancestral, get_sampler
from tests.fixtures.token_plugin import L, V, ExactTokenNet, exact_joint_table, sequence_index


def exact(process) -> Denoiser:
    return Denoiser(ExactTokenNet(process), process, prediction="logits")


def tv(samples: torch.Tensor, table: torch.Tensor) -> float:
    freq = torch.bincount(sequence_index(samples), minlength=V ** L).double() / samples.shape[0]
    return float(0.5 * (freq - table).abs().sum())


def product_of_marginals() -> torch.Tensor:
    table = exact_joint_table().reshape(V, V, V)
    m = [table.sum(dim=tuple(d for d in range(3) if d != k)) for k in range(3)]
    return (m[0][:, None, None] * m[1][None, :, None] * m[2][None, None, :]).flatten()


def test_token_denoiser_predicts_distributions():
    p = MaskedProcess(V)
    d = exact(p)
    x_t = torch.tensor([[V, V, V], [0, V, V]])
    probs = d.predict(x_t, torch.tensor([1.0, 0.5]))
    assert probs.shape == (2, L, V) and torch.allclose(probs.sum(-1), torch.ones(2, L), atol=1e-6)
    assert torch.allclose(d.predict(x_t, 0.5, target="logits").exp(), d.predict(x_t, 0.5), atol=1e-6)
    assert probs[1, 0, 0] == 1.0  # carried over
    # given x^0 = 0 the support leaves (0, 0, 1) and (0, 1, 2) with weights 0.3 : 0.1
    assert torch.allclose(probs[1, 1].double(), torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64), atol=1e-6)
    with pytest.raises(DistillError, match="x0 or logits"):
        d.predict(x_t, 0.5, target="eps")
    with pytest.raises(DistillError, match="predicts logits"):
        Denoiser(ExactTokenNet(p), p, prediction="x0")


def test_one_ancestral_step_draws_the_product_of_marginals():
    n = 20000
    x_T = MaskedProcess(V).prior((n, L))
    out = ancestral(exact(MaskedProcess(V)), x_T, timesteps=sampling_schedule(MaskedProcess(V), 1),
                    generator=torch.Generator().manual_seed(0))
    assert out.nfe == 1 and out.x0.dtype == torch.long
    assert tv(out.x0, product_of_marginals()) < 0.02  # sampling noise over 27 cells, n = 20000
    assert tv(out.x0, exact_joint_table()) > 0.3  # far from the correlated truth


@pytest.mark.parametrize("name", ["masked", "uniform"])
def test_many_ancestral_steps_recover_the_joint(name):
    """With N steps, two of the L = 3 positions change in the same step with probability about
    3/N; that (and sampling noise) bounds the total-variation error."""
    p = make_process(name, vocab_size=V)
    n, steps = 20000, 256
    x_T = p.prior((n, L), generator=torch.Generator().manual_seed(1))
    out = ancestral(exact(p), x_T, timesteps=sampling_schedule(p, steps), generator=torch.Generator().manual_seed(2),
                    return_trajectory=True)
    assert out.nfe == steps and len(out.trajectory) == steps + 1
    assert tv(out.x0, exact_joint_table()) < 3 / steps + 0.02


def test_ancestral_refuses_gaussian_denoisers_and_float_starts():
    from tests.fixtures.exact import ExactNet  # noqa: F401  (the Gaussian fixture exists)

    gaussian = Denoiser(torch.nn.Identity(), make_process("flow"), prediction="x0")
    with pytest.raises(DistillError, match="token models"):
        ancestral(gaussian, torch.zeros(2, 3, dtype=torch.long), timesteps=torch.tensor([1.0, 0.0]))
    with pytest.raises(DistillError, match="integer tokens"):
        ancestral(exact(MaskedProcess(V)), torch.zeros(2, 3), timesteps=torch.tensor([1.0, 0.0]))
    assert get_sampler("ancestral") is ancestral


def test_teacher_sample_fn_for_tokens_is_a_function_of_the_noise():
    teacher = exact(UniformProcess(V))
    fn = teacher_sample_fn(teacher, "ancestral", 4)
    noise = torch.randn(64, L, generator=torch.Generator().manual_seed(3))
    a, b = fn(noise, None), fn(noise, None)
    assert torch.equal(a.x0, b.x0) and a.nfe == 4
    other = fn(torch.randn(64, L, generator=torch.Generator().manual_seed(4)), None)
    assert not torch.equal(a.x0, other.x0)


def test_report_control_of_a_token_teacher_is_one_ancestral_step():
    class Cfg:
        teacher_sampler = {"name": "ancestral", "steps": 64}

    usual, control = teacher_settings(Cfg())
    assert usual["name"] == control["name"] == "ancestral" and control["steps"] == 1
