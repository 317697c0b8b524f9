"""distill.nets.UNetDenoiserNet: shapes, conditioning, config, taps, gradients, a tiny overfit."""
from __future__ import annotations

import json

import pytest
import torch

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.methods.heads import PooledHead, pick_feature_layer
from distill.nets import ExtraInputError, UNetDenoiserNet
from distill.process import make_process

SMALL = dict(base_channels=16, time_dim=32, head_channels=16)


def _net(**kw) -> UNetDenoiserNet:
    torch.manual_seed(0)
    return UNetDenoiserNet(**{**SMALL, **kw})


def _inputs(b=4, c=1, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, res, res, generator=g), torch.rand(b, generator=g)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised layers random weights so their effect is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(num_classes=10),
        dict(in_channels=3, resolution=32, channel_mults=(1, 2, 2), attention_resolutions=(16, 8), num_classes=5),
        dict(resolution=8, channel_mults=(1,), attention_resolutions=()),
        dict(num_res_blocks=2, dropout=0.1),
    ],
)
def test_shapes(kw):
    net = _net(**kw)
    c, res = kw.get("in_channels", 1), kw.get("resolution", 16)
    x, t = _inputs(c=c, res=res)
    cond = torch.arange(4) % kw["num_classes"] if "num_classes" in kw else None
    assert net(x, t, cond).shape == (4, c, res, res)
    assert net(x, torch.tensor(0.3), cond).shape == (4, c, res, res)  # scalar t broadcasts
    for name, width in net.feature_layers.items():
        assert dict(net.named_modules())[name] is not None and width > 0
    assert list(net.feature_layers)[-1] == "mid"


def test_zero_init_output():
    # ADM zero-initialises the output conv: a fresh network predicts exactly zero.
    net = _net(num_classes=3)
    x, t = _inputs()
    assert torch.count_nonzero(net(x, t, torch.tensor([0, 1, 2, 3]))) == 0


def test_time_and_class_conditioning():
    net = _net(num_classes=4)
    _perturb(net)
    assert net.null_class == 4
    x, t = _inputs()
    labels, null = torch.tensor([0, 1, 2, 3]), torch.full((4,), 4)
    out_c, out_null = net(x, t, labels), net(x, t, null)
    assert not torch.allclose(out_c, out_null)
    torch.testing.assert_close(net(x, t, None), out_null)  # cond=None is the null class
    torch.testing.assert_close(net(x[:1], t[:1], labels[:1]), out_c[:1], atol=1e-5, rtol=1e-4)  # per sample
    assert not torch.allclose(net(x, torch.full((4,), 0.1), labels), net(x, torch.full((4,), 0.9), labels))
    with pytest.raises(DistillError, match="null class"):
        net(x, t, torch.full((4,), 5))
    with pytest.raises(DistillError, match="Long class labels"):
        net(x, t, torch.zeros(4))
    with pytest.raises(DistillError, match="num_classes"):
        _net()(x, t, labels)


def test_bad_shapes_and_arguments():
    net = _net()
    with pytest.raises(DistillError, match=r"\[B, 1, 16, 16\]"):
        net(torch.zeros(2, 1, 32, 32), torch.rand(2))
    with pytest.raises(DistillError, match="multiple"):
        UNetDenoiserNet(resolution=10, channel_mults=(1, 2, 2))
    with pytest.raises(DistillError, match="num_classes"):
        UNetDenoiserNet(num_classes=0)


def test_extra_inputs():
    net = _net(extra_inputs=("r", "w"))
    _perturb(net, seed=1)
    for emb in net.extras.embeds.values():  # restore the zero-initialised last layers
        torch.nn.init.zeros_(emb.mlp[-1].weight)
        torch.nn.init.zeros_(emb.mlp[-1].bias)
    x, t = _inputs()
    base = net(x, t)
    torch.testing.assert_close(net(x, t, r=t / 2, w=2.0), base)  # zero-init: no effect at first
    _perturb(net.extras, seed=2)
    assert not torch.allclose(net(x, t, r=t / 2), base)
    torch.testing.assert_close(net(x, t, r=None), base)
    with pytest.raises(ExtraInputError, match="extra_inputs") as info:
        net(x, t, d=0.1)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match="'r'"):
        _net()(x, t, r=t)


def test_config_rebuilds_identical_network():
    net = _net(num_classes=3, extra_inputs=("r",), channel_mults=(1, 2, 2), attention_resolutions=(4,))
    _perturb(net)
    cfg = json.loads(json.dumps(net.config))
    clone = UNetDenoiserNet(**cfg)
    assert clone.config == net.config
    assert list(clone.state_dict()) == list(net.state_dict())
    clone.load_state_dict(net.state_dict())
    x, t = _inputs()
    labels = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(clone(x, t, labels, r=t), net(x, t, labels, r=t))


def test_feature_taps_and_pooled_head():
    net = _net(num_classes=3)
    den = Denoiser(net, make_process("flow"), prediction="eps")
    x, t = _inputs()
    with den.tap(*net.feature_layers) as feats:
        den.predict(x, t, torch.tensor([0, 1, 2, 3]))
    expected_res = {"down.0": 16, "down.2": 8, "up.1": 8, "up.4": 16, "mid": 8}
    assert net.feature_layers == {"down.0": 16, "down.2": 32, "up.1": 32, "up.4": 16, "mid": 32}
    for name, width in net.feature_layers.items():
        res = expected_res[name]
        assert feats[name].shape == (4, width, res, res)
        torch.manual_seed(0)
        assert PooledHead(width)(feats[name]).shape == (4,)
    # the default discriminator layer is the bottleneck, and a head on it trains the network
    name, width = pick_feature_layer(net, None)
    assert (name, width) == ("mid", 32)
    PooledHead(width)(feats[name]).sum().backward()
    assert net.inp.weight.grad is not None and net.inp.weight.grad.abs().sum() > 0


def test_gradients_reach_every_parameter():
    net = _net(num_classes=3, extra_inputs=("r",))
    x, t = _inputs()
    labels = torch.tensor([0, 1, 2, 3])
    # fresh (zero-initialised) network: every parameter is in the graph (DDP / FSDP need no
    # find_unused_parameters), although most gradients are still zero
    net(x, t, labels, r=t).square().sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    # once the zero-initialised layers move, every parameter gets a non-zero gradient
    net.zero_grad(set_to_none=True)
    _perturb(net)
    net(x, t, labels, r=t).square().sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def _images(n=8, res=16, seed=0):
    """Fixed synthetic images in [-1, 1]: a bright square on a dark background."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, res, res)
    for i in range(n):
        r, c = torch.randint(0, res - 6, (2,), generator=g).tolist()
        x[i, :, r : r + 6, c : c + 6] = 1.0
    return x


def test_overfit_sanity():
    # 50 Adam steps on 8 fixed (image, noise, t) triples: the eps-prediction loss must drop.
    net = _net(num_classes=2, base_channels=8, head_channels=8)  # ~50k parameters: fast on one core
    den = Denoiser(net, make_process("flow"), prediction="eps")
    g = torch.Generator().manual_seed(1)
    x0 = _images()
    eps, t = torch.randn(x0.shape, generator=g), 0.2 + 0.6 * torch.rand(8, generator=g)
    labels = torch.arange(8) % 2
    x_t = den.process.add_noise(x0, eps, t)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        loss = (den.predict(x_t, t, labels, target="eps") - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(float(eps.square().mean()))  # zero output at init
    assert losses[-1] < 0.5 * losses[0]  # measured: 1.06 -> 0.010


def test_default_size():
    # Defaults: 0.77M parameters (speed belongs in benchmarks, not in unit tests).
    net = UNetDenoiserNet(num_classes=10)
    assert 600_000 < sum(p.numel() for p in net.parameters()) < 1_200_000
