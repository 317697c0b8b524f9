"""The exact mixture teacher: posterior mean, loader, and sampling with Heun."""
from __future__ import annotations

import pytest
import torch

from distill import Denoiser, make_process, sample
from distill.errors import DistillError
from distill.metrics.distances import sliced_wasserstein
from distill.process.mixture import GaussianMixture
from distill_toy.modality import ToyModality
from distill_toy.teacher import ExactMixtureNet, load_exact_teacher

F64 = torch.float64


def test_exact_net_is_the_posterior_mean(gen):
    modality = ToyModality()
    process = make_process("flow")
    net = ExactMixtureNet(modality.mixture, process)
    x = torch.randn(64, 2, generator=gen(0)) * 1.5
    t = torch.rand(64, generator=gen(1)) * 0.98 + 0.01
    expected = modality.mixture.posterior_mean(x, process.alpha(t)[:, None], process.sigma(t)[:, None])
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("process_name", ["flow", "vp", "edm", "trig"])
def test_exact_net_matches_monte_carlo_bayes(process_name, gen):
    # E[x0 | x_t] = E_{x0 ~ p}[x0 N(x_t; alpha x0, sigma^2)] / E_{x0 ~ p}[N(x_t; alpha x0, sigma^2)]
    mix = GaussianMixture(
        means=torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=F64),
        stds=torch.tensor([0.3, 0.2, 0.4], dtype=F64),
        weights=torch.tensor([0.5, 0.3, 0.2], dtype=F64),
    )
    process = make_process(process_name)
    net = ExactMixtureNet(mix, process)
    x0 = mix.sample(400000, generator=gen(0)).x
    for u in (0.3, 0.6):
        t = process.t_min + u * (process.t_max - process.t_min) if process_name != "edm" else 0.7
        t_ = torch.tensor([t], dtype=F64)
        a, s = float(process.alpha(t_)), float(process.sigma(t_))
        x_t = torch.tensor([[0.4 * a, 0.1]], dtype=F64)
        logw = -((x_t - a * x0) ** 2).sum(1) / (2 * s * s)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        assert torch.allclose(net(x_t, t_)[0], mc, atol=0.02), (process_name, t)


def test_exact_for_a_single_gaussian(gen):
    mu = torch.tensor([[0.7, -1.2]], dtype=F64)
    s = 0.3
    mix = GaussianMixture(means=mu, stds=torch.tensor([s], dtype=F64), weights=torch.ones(1, dtype=F64))
    process = make_process("vp")
    net = ExactMixtureNet(mix, process)
    x = torch.randn(32, 2, generator=gen(0), dtype=F64)
    t = torch.linspace(0.05, 0.95, 32, dtype=F64)
    a, sg = process.alpha(t)[:, None], process.sigma(t)[:, None]
    expected = mu + a * s**2 / (a**2 * s**2 + sg**2) * (x - a * mu)
    assert torch.allclose(net(x, t), expected, atol=1e-12)


def test_exact_net_has_no_parameters_and_moves_with_to():
    net = ExactMixtureNet(ToyModality().mixture, make_process("flow"))
    assert list(net.parameters()) == []
    assert {"means", "stds", "weights"} <= set(net.state_dict())
    moved = net.to(torch.float32)
    assert moved.means.dtype == torch.float32
    out = moved(torch.zeros(3, 2), torch.full((3,), 0.5))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert torch.allclose(net(torch.zeros(2, 2), 0.5), torch.zeros(2, 2), atol=1e-6)  # scalar t, symmetric ring


def test_loader_builds_an_x0_denoiser():
    modality = ToyModality()
    teacher = load_exact_teacher({"loader": "exact", "process": "flow"}, modality)
    assert isinstance(teacher, Denoiser)
    assert teacher.prediction == "x0" and teacher.process.name == "flow"
    assert isinstance(teacher.net, ExactMixtureNet)
    # default process is flow, a dict spec goes through make_process, unset keys are ignored
    assert load_exact_teacher({"loader": "exact"}, modality).process.name == "flow"
    assert load_exact_teacher({"loader": "exact", "process": {"name": "vp"}, "path": None}, modality).process.name == "vp"
    # eps from the x0 prediction is consistent with x_t = alpha x0 + sigma eps
    x_t, t = torch.randn(5, 2), torch.full((5,), 0.4)
    x0, eps = teacher.predict(x_t, t), teacher.predict(x_t, t, target="eps")
    assert torch.allclose(0.6 * x0 + 0.4 * eps, x_t, atol=1e-5)


def test_loader_errors_are_actionable():
    modality = ToyModality()
    with pytest.raises(DistillError, match="did you mean 'process'"):
        load_exact_teacher({"loader": "exact", "proces": "flow"}, modality)
    with pytest.raises(DistillError, match="loads no checkpoint"):
        load_exact_teacher({"loader": "exact", "path": "teacher.safetensors"}, modality)
    with pytest.raises(DistillError, match="configs/toy/teacher.yaml"):
        load_exact_teacher({"loader": "exact"}, ToyModality({"dataset": "checkerboard"}))


def test_loader_accepts_omegaconf():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"loader": "exact", "process": "trig"})
    assert load_exact_teacher(cfg, ToyModality()).process.name == "trig"


@pytest.mark.parametrize("dataset", ["ring8", "ring8_unequal"])
def test_exact_teacher_with_heun_reproduces_the_mixture(dataset, gen):
    modality = ToyModality({"dataset": dataset})
    teacher = load_exact_teacher(modality.default_teacher(), modality)
    n = 8000
    ref = modality.reference(n).x0
    floor = sliced_wasserstein(modality.sample_data(n, gen(5)).x0, ref)
    x_T = teacher.process.prior((n, 2), generator=gen(1))
    many = sample(teacher, x_T, sampler="heun", steps=35)
    one = sample(teacher, x_T, sampler="heun", steps=1)
    assert many.nfe == 69
    good = modality.evaluate(many.x0, ref)
    bad = modality.evaluate(one.x0, ref)
    # near the sampling floor (which itself varies by ~2x between seeds: mode-count noise)
    assert good["sliced_wasserstein_1"] < max(3 * floor, 0.04), (good, floor)
    assert good["mode_coverage"] == 1.0
    assert good["mode_weight_tv"] < 0.03
    assert good["outlier_fraction"] < 0.03
    # the negative control: one step returns the mean of the data, far from every mode
    assert bad["sliced_wasserstein"] > 0.8
    assert bad["mode_coverage"] < 0.5
