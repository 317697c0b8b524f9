"""mdlm (masked diffusion teacher training): the NELBO against closed forms, and a tiny run end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distill import Denoiser
from distill.config import load_config
from distill.engine.run import open_run, train
from distill.errors import DistillError
from distill.method import Batch, Roles
from distill.methods.discrete_diffusion import MDLM, low_discrepancy_times
from distill.nets.token_transformer import TokenTransformerNet
from distill.process import MaskedProcess
from tests.fixtures.token_plugin import L, PROBS, V, ExactTokenNet, TinyTokens


def nelbo(net, schedule: str, batches: int = 8, size: int = 4096, **options) -> float:
    method = MDLM(MDLM.Options(schedule=schedule, **options))
    method.bind(TinyTokens())
    process = method.model_spec().process
    roles = Roles({"student": Denoiser(net(process), process, prediction="logits")})
    method.process = process
    values = []
    for k in range(batches):
        g = torch.Generator().manual_seed(k)
        x0 = TinyTokens().sample_data(size, g).x0
        values.append(float(method.loss("student", Batch(noise=torch.randn(size, L), x0=x0, generator=g), roles).total.detach()))
    return sum(values) / len(values)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_uniform_prediction_costs_log_v_per_token(schedule):
    """p = 1/V everywhere: E_t[-alpha'/(1 - alpha) P(masked | t)] log V = E_t[-alpha'] log V = log V,
    for any schedule with alpha(0) = 1, alpha(1) = 0 (up to the clipped t < t_eps, a 1e-3 effect)."""
    uniform = lambda p: TokenTransformerNet(vocab_size=V, seq_len=L, hidden=8, depth=1, heads=2, time_dim=8)  # noqa: E731
    assert nelbo(uniform, schedule) == pytest.approx(math.log(V), rel=0.05)


def test_importance_weighted_time_draws_keep_the_nelbo():
    """t = u^2 draws small t more often; the 1/density weight keeps E[loss] = log V for p = 1/V."""
    uniform = lambda p: TokenTransformerNet(vocab_size=V, seq_len=L, hidden=8, depth=1, heads=2, time_dim=8)  # noqa: E731
    assert nelbo(uniform, "linear", time_power=2.0) == pytest.approx(math.log(V), rel=0.05)
    # the unweighted cross-entropy of the masked tokens is log V whatever the time density
    method_ce = nelbo(uniform, "linear", batches=2, weighting="uniform", time_power=2.0)
    assert method_ce == pytest.approx(math.log(V), rel=1e-5)


def test_exact_denoiser_reaches_the_entropy_bound():
    """The NELBO bounds the data's entropy per token from above; the exact denoiser is within the
    Monte-Carlo error of the bound and far below the uniform model's log V."""
    entropy_per_token = float(-(PROBS * PROBS.log()).sum()) / L
    value = nelbo(ExactTokenNet, "linear")
    assert entropy_per_token - 0.03 < value < entropy_per_token + 0.05
    assert value < 0.6 * math.log(V)


def test_low_discrepancy_times_cover_the_interval():
    g = torch.Generator().manual_seed(0)
    t = low_discrepancy_times(Batch(noise=torch.zeros(1000, 2), generator=g), t_eps=1e-3)
    assert t.min() >= 1e-3 and t.max() <= 1
    # stratified: exactly one time in each 1/1000-wide stratum of the mapped interval
    strata = ((t.double() - 1e-3) / (1 - 1e-3) * 1000).floor().long()
    assert torch.equal(torch.sort(torch.remainder(strata, 1000)).values, torch.arange(1000))


def test_mdlm_needs_a_vocabulary():
    class NoVocab:
        pass

    with pytest.raises(DistillError, match="vocab_size"):
        MDLM().bind(NoVocab())
    with pytest.raises(DistillError, match="masked, uniform"):
        MDLM(MDLM.Options(process="flow"))


@pytest.fixture
def token_plugins(monkeypatch):
    from distill import plugins

    monkeypatch.setenv("DISTILL_PLUGIN_MODULES", "tests.fixtures.token_plugin")
    yield plugins.get_manager(reload=True)
    monkeypatch.delenv("DISTILL_PLUGIN_MODULES")
    plugins.get_manager(reload=True)


def test_tiny_mdlm_run_trains_exports_and_samples(tmp_path, token_plugins):
    cfg = load_config(None, [
        "modality=tiny_tokens", "method=mdlm", f"output.dir={tmp_path / 'run'}", "trainer.max_steps=4",
        "trainer.progress=false", "trainer.checkpoint_every=0", "data.batch_size=16", "method_args.sampler_steps=8",
        "eval.n_samples=32", "eval.steps=[8,2]",
    ])
    run = train(cfg)
    side = json.loads((run.run_dir / "student.json").read_text())
    assert side["prediction"] == "logits" and side["process"] == {"name": "masked", "vocab_size": V, "schedule": "linear"}
    assert side["sampler"]["name"] == "ancestral" and side["sampler"]["steps"] == 8
    batch = run.module.make_batch(0, 0)
    assert batch.x_T.dtype == torch.long and bool((batch.x_T == MaskedProcess(V).mask_id).all())
    opened = open_run(run.run_dir)
    out = opened.method.sample(opened.student, torch.randn(5, L), steps=3, generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (5, L) and out.nfe == 3 and bool(((out.x0 >= 0) & (out.x0 < V)).all())
