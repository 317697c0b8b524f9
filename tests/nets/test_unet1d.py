"""distill.nets.unet1d: the temporal FiLM UNet of diffusion policies."""
from __future__ import annotations

import pytest
import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.nets import with_extra_inputs
from distill.nets.unet1d import UNet1DDenoiserNet
from distill.process import make_process


def _net(**kw) -> UNet1DDenoiserNet:
    torch.manual_seed(0)
    kw = {"channels": 2, "horizon": 8, "cond_dim": 6, "down_dims": (8, 16), "time_dim": 16, **kw}
    return UNet1DDenoiserNet(**kw)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised output layer random weights so the body's effect is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _inputs(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, 2, generator=g), torch.rand(b, generator=g), torch.randn(b, 6, generator=g)


def test_shape_and_zero_initialised_output():
    net = _net()
    x, t, c = _inputs()
    out = net(x, t, c)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # a fresh net predicts 0, like the 2-D UNet


def test_time_and_condition_modulate_every_sample_separately():
    net = _net()
    _perturb(net)
    x, t, c = _inputs()
    base = net(x, t, c)
    # changing one sample's condition changes that sample's output only (no mixing across the batch)
    c2 = c.clone()
    c2[1] += 1.0
    moved = net(x, t, c2)
    assert not torch.allclose(moved[1], base[1])
    torch.testing.assert_close(moved[[0, 2, 3]], base[[0, 2, 3]])
    t2 = t.clone()
    t2[2] = 1.0 - t2[2]
    assert not torch.allclose(net(x, t2, c)[2], base[2])
    # None is the all-zero condition (the null condition of guidance); [B, 2, 3] is flattened
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.zeros_like(c)))
    torch.testing.assert_close(net(x, t, c.reshape(4, 2, 3)), base)


def test_gradients_reach_every_parameter():
    net = _net()
    _perturb(net)
    x, t, c = _inputs()
    net(x, t, c).square().sum().backward()
    # the skip of encoder level 0 is not read by the decoder, but its blocks feed level 1
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_bad_inputs_fail_with_what_was_expected():
    net = _net()
    x, t, c = _inputs()
    with pytest.raises(DistillError, match=r"expects x of shape \[B, 8, 2\]"):
        net(x[:, :6], t, c)
    with pytest.raises(DistillError, match=r"cond_dim=6"):
        net(x, t, c[:, :5])
    with pytest.raises(DistillError, match="without a condition"):
        _net(cond_dim=0)(x, t, c)
    with pytest.raises(DistillError, match="multiple of 4"):
        _net(horizon=6, down_dims=(8, 16, 32))
    with pytest.raises(DistillError, match="odd"):
        _net(kernel_size=4)


def test_config_rebuilds_the_network_and_extra_inputs_start_as_identity():
    net = _net()
    _perturb(net)
    x, t, c = _inputs()
    rebuilt = UNet1DDenoiserNet(**net.config)
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x, t, c), net(x, t, c))
    with_r = with_extra_inputs(net, ("r",))
    assert with_r.extra_inputs == ("r",)
    torch.testing.assert_close(with_r(x, t, c, r=torch.rand(4)), net(x, t, c))  # zero-initialised embedding
    with pytest.raises(DistillError, match="extra input"):
        net(x, t, c, r=torch.rand(4))


def test_feature_layers_are_tappable_and_sized_as_declared():
    net = _net(down_dims=(8, 16, 32))
    den = Denoiser(net, make_process("vp"), prediction="eps")
    x, t, c = _inputs()
    layers = list(net.feature_layers)
    assert layers[-1] == "mid"  # the default discriminator layer
    with den.tap(*layers) as feats:
        den.predict(x, t, c)
    for name, channels in net.feature_layers.items():
        assert feats[name].ndim == 3 and feats[name].shape[:2] == (4, channels)
    assert feats["mid"].shape[2] == 8 // 4  # two halvings of the horizon
