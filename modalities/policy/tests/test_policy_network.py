"""distill_policy.network: policy networks carry their normaliser and check observations."""
from __future__ import annotations

import pytest
import torch

from distill.engine.io import load_into, save_weights
from distill.errors import DistillError
from distill.nets import with_extra_inputs
from distill_policy.network import PolicyTransformer, PolicyUNet

SMALL = {"unet": (PolicyUNet, {"down_dims": [8, 16], "time_dim": 16}),
         "transformer": (PolicyTransformer, {"width": 16, "depth": 1, "heads": 2, "time_dim": 16})}


def _net(kind: str, **kw):
    torch.manual_seed(0)
    cls, args = SMALL[kind]
    net = cls(obs_dim=4, action_dim=2, horizon=8, n_obs_steps=2, **{**args, **kw})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # wake the zero-initialised output layer up
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    net.normalizer.fit(torch.randn(50, 4), torch.rand(50, 2))
    return net


def _inputs(b=3):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 8, 2, generator=g), torch.rand(b, generator=g), torch.randn(b, 2, 4, generator=g)


@pytest.mark.parametrize("kind", list(SMALL))
def test_shapes_history_dependence_and_null_condition(kind):
    net = _net(kind)
    x, t, cond = _inputs()
    out = net(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    older = cond.clone()
    older[:, 0] += 1.0  # the older observation of the history matters too
    assert not torch.allclose(net(x, t, older), out)
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.zeros_like(cond)))


@pytest.mark.parametrize("kind", list(SMALL))
def test_normaliser_travels_in_the_safetensors_file(kind, tmp_path):
    net = _net(kind)
    path = save_weights(net, tmp_path / "policy.safetensors", {"network": net.config})
    fresh = type(net)(**net.config)
    assert not fresh.normalizer.fitted
    load_into(fresh, path)
    assert fresh.normalizer.matches(net.normalizer)
    x, t, cond = _inputs()
    torch.testing.assert_close(fresh(x, t, cond), net(x, t, cond))


@pytest.mark.parametrize("kind", list(SMALL))
def test_checkpoint_without_normaliser_statistics_fails_clearly(kind, tmp_path):
    net = _net(kind)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("normalizer.")}
    with pytest.raises(DistillError, match=r"no normaliser statistics \(normalizer.obs_min, .* missing\)"):
        type(net)(**net.config).load_state_dict(state)
    unfitted = type(net)(**net.config)
    with pytest.raises(DistillError, match="hold NaN"):
        type(net)(**net.config).load_state_dict(unfitted.state_dict())
    # through the safetensors loader of the core too (it must not swallow the message)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(DistillError, match="no normaliser statistics"):
        load_into(type(net)(**net.config), tmp_path / "bare.safetensors")


@pytest.mark.parametrize("kind", list(SMALL))
def test_wrong_observation_dimension_fails_clearly(kind):
    net = _net(kind)
    x, t, cond = _inputs()
    with pytest.raises(DistillError, match="observations of dimension 3 .* trained on 4-dimensional"):
        net(x, t, cond[..., :3])
    with pytest.raises(DistillError, match="last 2 observations"):
        net(x, t, cond[:, :1])


def test_images_go_through_the_cnn_encoder():
    net = _net("unet", image_shape=[3, 24, 24], image_features=8)
    x, t, cond = _inputs()
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 2, 3, 24, 24, generator=g) * 2 - 1
    out = net(x, t, {"state": cond, "image": image})
    assert out.shape == x.shape
    assert not torch.allclose(net(x, t, {"state": cond, "image": -image}), out)
    with pytest.raises(DistillError, match="needs cond="):
        net(x, t, cond)
    with pytest.raises(DistillError, match=r"images must be \[B, 2, 3, 24, 24\]"):
        net(x, t, {"state": cond, "image": image[:, :, :, :12]})


@pytest.mark.parametrize("kind", list(SMALL))
def test_extra_inputs_keep_the_normaliser_and_start_as_the_same_function(kind):
    net = _net(kind)
    with_r = with_extra_inputs(net, ("r",))
    assert with_r.normalizer.matches(net.normalizer)
    x, t, cond = _inputs()
    torch.testing.assert_close(with_r(x, t, cond, r=torch.rand(3)), net(x, t, cond))
