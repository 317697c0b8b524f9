"""The exact arithmetic denoiser against closed forms, and what samplers do with it: the random
reveal order of the ancestral sampler at few steps, and an order learned by ``lsd``."""
from __future__ import annotations

import pytest
import torch

from distill import Denoiser
from distill.errors import DistillError
from distill.method import Batch, Roles
from distill.methods.lsd import LSD, order_sampler
from distill.process import MaskedProcess, sampling_schedule
from distill.samplers import ancestral
from distill_tokens.exact import ExactArithmeticNet
from distill_tokens.languages import Arithmetic
from distill_tokens.modality import TokensModality

LANG = Arithmetic()


@pytest.fixture(scope="module")
def exact() -> Denoiser:
    p = MaskedProcess(LANG.vocab_size)
    return Denoiser(ExactArithmeticNet(LANG), p, prediction="logits")


def test_marginals_match_closed_forms(exact):
    mask = LANG.vocab_size
    x = torch.full((2, 30), mask)
    x[1, :10] = LANG.encode("07+13=020;" + "00+00=000;" * 2)[0, :10]
    x[1, 3:5] = mask  # b hidden: 07+??=020 leaves b = 13
    probs = exact.predict(x, torch.ones(2), target="x0")
    # nothing revealed: c's hundreds digit is 1 iff a + b >= 100, for 4,950 of the 10,000 pairs
    assert float(probs[0, 6, 1]) == pytest.approx(0.495, abs=1e-6)
    assert float(probs[0, 0, 3]) == pytest.approx(0.1, abs=1e-6)  # a's digits are uniform
    assert float(probs[0, 2, 10]) == pytest.approx(1.0)  # '+' is certain
    # a = 07 and c = 020 revealed: b = 13 exactly
    assert float(probs[1, 3, 1]) == pytest.approx(1.0, abs=1e-6) and float(probs[1, 4, 3]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(DistillError, match="tokens"):
        exact.net(torch.zeros(2, 29, dtype=torch.long))


def test_random_reveals_break_equations_at_few_steps(exact):
    """Exact conditionals, ancestral sampler: digits of one equation revealed in the same step are
    drawn independently. With 4 steps each digit's step is uniform over 4, so most equations see
    two dependent digits together (measured with 20,000 equations: 43 % valid per equation, 8 %
    per 3-equation sequence); at 64 steps almost none do (95 % / 86 %). The bounds below sit
    at least seven standard errors (at most 0.009 for 1,000 sequences) away from those values."""
    p = exact.process
    few = ancestral(exact, p.prior((1000, 30)), timesteps=sampling_schedule(p, 4), generator=torch.Generator().manual_seed(0)).x0
    eq = LANG.equation_valid(few).float().mean()
    assert 0.35 < float(eq) < 0.5 and float(LANG.valid(few).float().mean()) < 0.15


@pytest.mark.slow
def test_a_learned_reveal_order_makes_four_steps_exact(exact):
    """``lsd`` with a learned reveal order (fitted to the language's data) learns to reveal each
    equation's operands before its sum: the 4-step sampler of the exact denoiser becomes almost
    always valid, against 8 % for random reveals, and still covers the operands uniformly."""
    modality = TokensModality(TokensModality.Options(task="arithmetic"))
    m = LSD(LSD.Options(reveal_order="learned", order_targets="data"))
    m.student_steps = 4
    coef = m.build_role(m.roles()[1], None, modality)
    roles = Roles({"teacher": exact, "student": exact, "sampler": coef})
    m.setup(roles, modality)
    opt = torch.optim.Adam([coef.theta], lr=0.1)
    for step in range(120):
        g = torch.Generator().manual_seed(step)
        batch = Batch(noise=torch.randn(128, 30), x0=LANG.sample(128, g), generator=g, x_T=exact.process.prior((128, 30)))
        opt.zero_grad()
        m.loss("sampler", batch, roles).total.backward()
        opt.step()
    spec = m.sampler_spec(4)
    out = order_sampler(exact, exact.process.prior((1000, 30)), None, sampling_schedule(exact.process, 4), spec["logit_scale"],
                        spec["time_shift"], spec["reveal_logits"], torch.Generator().manual_seed(1)).x0
    valid = LANG.valid(out)
    assert float(valid.float().mean()) > 0.9
    operands = LANG.operands(out)
    hist = torch.bincount(operands, minlength=100).double() / operands.numel()
    # KL to uniform of 100 bins from >= 5,400 operands: the finite-sample bias is ~ 99 / (2 n) < 0.01
    assert float((hist[hist > 0] * (hist[hist > 0] * 100).log()).sum()) < 0.03
