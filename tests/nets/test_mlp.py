"""distill.nets: MLPDenoiserNet and the scalar embeddings."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.nets import ExtraInputError, MLPDenoiserNet, ScalarConditioning, sinusoidal_embedding
from distill.process import make_process


def _inputs(b=8, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dim, generator=g), torch.rand(b, generator=g)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised layers random weights so their effect is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_sinusoidal_embedding():
    t = torch.tensor([0.0, 0.5, 1.0])
    e = sinusoidal_embedding(t, 8, max_period=100.0)
    assert e.shape == (3, 8)
    # t = 0: cos terms 1, sin terms 0
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # frequencies f_k = max_period^(-k/half): the first is 1, the last 100^(-3/4)
    assert float(e[2, 0]) == pytest.approx(math.cos(1.0))
    assert float(e[2, 3]) == pytest.approx(math.cos(100.0 ** (-3 / 4)))
    assert float(e[1, 4]) == pytest.approx(math.sin(0.5))
    assert sinusoidal_embedding(t, 7).shape == (3, 7)  # odd dims are zero-padded
    assert sinusoidal_embedding(torch.tensor(0.3), 4).shape == (1, 4)
    torch.testing.assert_close(sinusoidal_embedding(t, 8, scale=10.0), sinusoidal_embedding(10 * t, 8))


def test_shapes_and_config_roundtrip():
    net = MLPDenoiserNet(3, hidden=32, depth=2, time_dim=16)
    x, t = _inputs(dim=3)
    out = net(x, t)
    assert out.shape == (8, 3)
    # scalar t broadcasts
    assert net(x, torch.tensor(0.4)).shape == (8, 3)
    # config is JSON-able and rebuilds the same network
    cfg = json.loads(json.dumps(net.config))
    clone = MLPDenoiserNet(**cfg)
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone(x, t), out)
    with pytest.raises(DistillError, match=r"\[B, 3\]"):
        net(torch.zeros(8, 2), t)


def test_time_matters():
    net = MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16)
    x, _ = _inputs()
    assert not torch.allclose(net(x, torch.full((8,), 0.1)), net(x, torch.full((8,), 0.9)))


def test_class_conditioning_and_null_class():
    net = MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16, num_classes=4)
    assert net.null_class == 4
    x, t = _inputs()
    labels = torch.arange(8) % 4
    null = torch.full((8,), 4)
    out_c = net(x, t, labels)
    out_null = net(x, t, null)
    assert out_c.shape == (8, 2) and not torch.allclose(out_c, out_null)
    # cond=None means the null class
    torch.testing.assert_close(net(x, t, None), out_null)
    # per-sample labels: sample i only depends on its own label
    torch.testing.assert_close(net(x[:1], t[:1], labels[:1]), out_c[:1])
    with pytest.raises(DistillError, match="null class"):
        net(x, t, torch.full((8,), 5))
    with pytest.raises(DistillError, match="Long class labels"):
        net(x, t, torch.zeros(8))
    with pytest.raises(DistillError, match="num_classes"):
        MLPDenoiserNet(2, hidden=8, depth=1, time_dim=8)(x, t, labels)


def test_guidance_through_denoiser():
    # Denoiser.guided with the null class: scale 1 is the conditional output, scale 0 the null one.
    net = MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16, num_classes=3)
    den = Denoiser(net, make_process("flow"), prediction="x0")
    x, t = _inputs()
    labels, null = torch.arange(8) % 3, torch.full((8,), 3)
    with torch.no_grad():
        torch.testing.assert_close(den.guided(x, t, labels, null, 1.0), den.predict(x, t, labels))
        torch.testing.assert_close(den.guided(x, t, labels, null, 0.0), den.predict(x, t, null))


def test_extra_inputs():
    net = MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16, extra_inputs=("r", "w"))
    x, t = _inputs()
    # zero-initialised: extra inputs change nothing at first (a student copied from a teacher
    # starts as the teacher)
    torch.testing.assert_close(net(x, t, r=t * 0.5), net(x, t))
    _perturb(net.extras)
    base = net(x, t)
    with_r = net(x, t, r=t * 0.5)
    assert not torch.allclose(with_r, base)
    # omitted or None = zero contribution
    torch.testing.assert_close(net(x, t, r=None), base)
    # a network without the extras but the same other weights gives the omitted output
    plain = MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("extras.") for k in unexpected)
    torch.testing.assert_close(plain(x, t), base)
    # scalars broadcast over the batch
    torch.testing.assert_close(net(x, t, w=2.0), net(x, t, w=torch.full((8,), 2.0)))
    # undeclared -> a DistillError that is also a TypeError
    with pytest.raises(ExtraInputError, match="extra_inputs") as info:
        net(x, t, d=0.1)
    assert isinstance(info.value, TypeError) and isinstance(info.value, DistillError)
    with pytest.raises(TypeError, match="'d'"):
        MLPDenoiserNet(2, hidden=8, depth=1, time_dim=8)(x, t, d=0.1)


def test_extra_inputs_through_denoiser_and_gradients():
    net = MLPDenoiserNet(2, hidden=32, depth=2, time_dim=16, extra_inputs=("r",))
    den = Denoiser(net, make_process("flow"), prediction="flow")
    x, t = _inputs()
    out = den.predict(x, t, None, target="x0", r=t / 2)
    out.square().mean().backward()
    # the extra's MLP gets gradients (its zero-initialised last layer first)
    assert float(net.extras.embeds["r"].mlp[-1].weight.grad.abs().sum()) > 0


def test_scalar_conditioning_validation():
    with pytest.raises(DistillError, match="identifiers"):
        ScalarConditioning(("not valid",))
    with pytest.raises(DistillError, match="distinct"):
        ScalarConditioning(("r", "r"))


def test_feature_taps():
    net = MLPDenoiserNet(2, hidden=32, depth=3, time_dim=16)
    assert net.feature_layers == {"blocks.0": 32, "blocks.1": 32, "blocks.2": 32}
    den = Denoiser(net, make_process("vp"), prediction="eps")
    x, t = _inputs()
    with den.tap(*net.feature_layers) as feats:
        out = den.predict(x, t)
    for name, width in net.feature_layers.items():
        assert feats[name].shape == (8, width)
    # a head on the features trains the network through the tap
    head = torch.nn.Linear(32, 1)
    head(feats["blocks.1"]).mean().backward()
    assert net.blocks[0].linear.weight.grad is not None
    assert out.shape == (8, 2)


def test_default_size():
    # The lead trains 3 x 256 students at batch 256: ~307k parameters (its step time is a
    # benchmark matter, not a unit test's: `distill bench`).
    net = MLPDenoiserNet(2)
    assert 250_000 < sum(p.numel() for p in net.parameters()) < 400_000
