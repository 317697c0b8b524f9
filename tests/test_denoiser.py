"""Denoiser: canonical predictions through the process, CFG convention, feature taps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Denoiser, DistillError, make_process


class Affine(nn.Module):
    """A net whose native output is a known affine function of (x, t, cond)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x, t, cond=None, **extra):
        out = self.body(x) * t[:, None]
        if cond is not None:
            out = out + cond[:, None].float()
        return out


@pytest.mark.parametrize("process_name", ["flow", "vp", "edm", "trig"])
@pytest.mark.parametrize("native", ["x0", "eps", "v", "flow"])
def test_predict_converts_through_the_process(process_name, native):
    torch.manual_seed(0)
    process = make_process(process_name)
    d = Denoiser(Affine(), process, prediction=native)
    x = torch.randn(8, 2)
    t = torch.full((8,), 0.3 * process.t_max + 0.7 * process.t_min)
    raw = d.raw(x, t)
    for target in ("x0", "eps", "v", "flow", "score"):
        assert torch.allclose(d.predict(x, t, target=target), process.convert(raw, x, t, native, target), atol=1e-5)
    assert torch.equal(d.predict(x, t, target=native), raw)


def test_guidance_convention():
    d = Denoiser(Affine(), make_process("flow"), prediction="flow")
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    cond, null = torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    c, u = d.predict(x, t, cond), d.predict(x, t, null)
    assert torch.allclose(d.guided(x, t, cond, null, 1.0), c)
    assert torch.allclose(d.guided(x, t, cond, null, 0.0), u)
    assert torch.allclose(d.guided(x, t, cond, null, 3.0), u + 3.0 * (c - u))
    # guidance commutes with the (affine) conversions
    cf, uf = d.predict(x, t, cond, target="flow"), d.predict(x, t, null, target="flow")
    assert torch.allclose(d.guided(x, t, cond, null, 3.0, target="x0"),
                          d.process.convert(uf + 3.0 * (cf - uf), x, t, "flow", "x0"), atol=1e-5)


def test_time_input_scaling_and_scalar_t():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x, t, cond=None):
            seen["t"] = t
            return x

    d = Denoiser(Spy(), make_process("vp_discrete"), prediction="eps", time_input=999)
    d.predict(torch.zeros(3, 2), torch.tensor(0.5))
    assert seen["t"].shape == (3,) and torch.allclose(seen["t"], torch.full((3,), 499.5))


def test_taps_capture_named_layers_and_reject_unknown_ones():
    d = Denoiser(Affine(), make_process("flow"))
    with d.tap("body.1") as features:
        d.predict(torch.randn(5, 2), torch.full((5,), 0.5))
    assert features["body.1"].shape == (5, 4)
    with pytest.raises(DistillError, match="no layer named"):
        with d.tap("body.9"):
            pass


def test_unknown_prediction_type():
    with pytest.raises(DistillError, match="prediction"):
        Denoiser(Affine(), make_process("flow"), prediction="noise")
