"""sdtt: targets and divergences against closed forms, round plan, the exact teacher's martingale,
a tiny run end to end, and the kind check that keeps continuous methods off tokens."""
from __future__ import annotations

import math

import pytest
import torch

from distill import Denoiser
from distill.config import load_config
from distill.engine.run import train
from distill.errors import DistillError
from distill.methods.sdtt import SDTT, _step_each, divergence, sdtt_target
from distill.process import MaskedProcess
from tests.fixtures.token_plugin import L, V, ExactTokenNet


def test_target_takes_the_step_that_decided_each_token():
    p1 = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]])
    p2 = torch.tensor([[[0.0, 1.0, 0.0], [0.3, 0.3, 0.4]]])
    z_m = torch.tensor([[2, V]])  # position 0 revealed by the first step, position 1 still masked
    out = sdtt_target(p1, p2, z_m, mask_id=V)
    assert torch.equal(out[0, 0], p1[0, 0]) and torch.equal(out[0, 1], p2[0, 1])


def test_divergences_match_their_formulas():
    s = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    backward = divergence("kl_backward", s.log(), q)
    forward = divergence("kl_forward", s.log(), q)
    assert float(backward) == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5), abs=1e-12)
    assert float(forward) == pytest.approx(0.25 * math.log(0.5) + 0.5 * math.log(2), abs=1e-12)
    assert float(divergence("tvd", s.log(), q)) == pytest.approx(0.25)
    for kind in ("kl_backward", "kl_forward", "tvd"):
        assert float(divergence(kind, q.log(), q)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DistillError, match="kl_backward"):
        divergence("js", s.log(), q)


def test_round_plan_halves_from_the_teacher_steps():
    m = SDTT(SDTT.Options(teacher_steps=64, steps_per_round=10))
    m.student_steps = 4
    assert [r.student_steps for r in m.plan] == [32, 16, 8, 4]
    assert m.round_at(0).student_steps == 32 and m.round_at(35).student_steps == 4 and m.round_at(999).index == 3
    m.student_steps = 3
    with pytest.raises(DistillError, match="teacher_steps"):
        m.plan


def test_exact_teacher_target_is_unbiased_for_its_own_prediction():
    """Revealing a position is independent of its value under the masked process, so for the
    exact denoiser E[p(x0^l | z_m) | z_t, l masked at m] = p(x0^l | z_t): the SDTT target's mean
    is the teacher's one-step prediction (the two steps add dependence, not a marginal shift)."""
    p = MaskedProcess(V)
    teacher = Denoiser(ExactTokenNet(p), p, prediction="logits")
    m = SDTT()
    m.process = p
    n = 40000
    z_t = torch.full((n, L), V)
    z_t[:, 0] = 0  # x^0 = 0 observed: the remaining positions are correlated
    t = torch.full((n,), 0.5)
    target = m.targets(teacher, z_t, t, 0.5, None, torch.Generator().manual_seed(0))
    p1 = teacher.predict(z_t[:1], t[:1])[0]
    se = 0.5 / math.sqrt(n)
    assert torch.allclose(target.mean(0)[1:].double(), p1[1:].double(), atol=5 * se)


def test_step_each_uses_per_sequence_times():
    p = MaskedProcess(V)
    z = torch.full((2000, L), V)
    probs = torch.full((2000, L, V), 1.0 / V)
    t = torch.cat([torch.full((1000,), 1.0), torch.full((1000,), 0.5)]).double()
    s = torch.cat([torch.full((1000,), 0.0), torch.full((1000,), 0.5)]).double()
    out = _step_each(p, z, probs, t, s, torch.Generator().manual_seed(0))
    assert bool((out[:1000] != V).all())  # t = 1 -> 0 reveals everything
    assert bool((out[1000:] == V).all())  # t = s reveals nothing


@pytest.fixture
def token_plugins(monkeypatch):
    from distill import plugins

    monkeypatch.setenv("DISTILL_PLUGIN_MODULES", "tests.fixtures.token_plugin")
    yield plugins.get_manager(reload=True)
    monkeypatch.delenv("DISTILL_PLUGIN_MODULES")
    plugins.get_manager(reload=True)


def test_continuous_methods_refuse_tokens_in_one_sentence(token_plugins):
    with pytest.raises(DistillError) as err:
        token_plugins.check_compatible("dmd2", "tiny_tokens")
    message = str(err.value)
    assert message.startswith("method 'dmd2' needs a continuous modality, but 'tiny_tokens' is discrete")
    assert "sdtt" in message and "di4c" in message and message.count(". ") == 0


def test_tiny_sdtt_run_over_two_rounds(tmp_path, token_plugins):
    common = ["modality=tiny_tokens", "trainer.progress=false", "trainer.checkpoint_every=0", "data.batch_size=16",
              "eval.n_samples=32"]
    teacher = train(load_config(None, common + ["method=mdlm", f"output.dir={tmp_path / 'teacher'}",
                                                "trainer.max_steps=3", "eval.steps=[4]"]))
    run = train(load_config(None, common + [
        "method=sdtt", f"output.dir={tmp_path / 'sdtt'}", "teacher.loader=safetensors",
        f"teacher.path={teacher.run_dir / 'student.safetensors'}", "student.steps=2", "method_args.teacher_steps=8",
        "method_args.steps_per_round=2", "method_args.teacher_weights=student", "trainer.max_steps=5", "eval.steps=[2]",
    ]))
    module = run.module
    assert [r.student_steps for r in module.method.plan] == [4, 2]
    # from round 1 on the round teacher holds the student of round 0, not the original teacher
    assert module.method._loaded_round == 1
    assert (run.run_dir / "student.safetensors").is_file()
