"""Discriminator heads: pooled (mean activation per channel) and conv (a look at the map first)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.errors import DistillError
from distill.methods.add import ADD
from distill.methods.dmd2 import DMD2
from distill.methods.heads import ConvHead, MultiLayerHead, PooledHead, head_spatial_dims, make_head


def _stripes(n: int, vertical: bool) -> torch.Tensor:
    """``[n, 4, 8, 8]`` maps of 0/1 stripes: the same mean (1/2) in every channel either way."""
    line = (torch.arange(8) % 2).float()
    grid = line.view(1, 8).expand(8, 8) if vertical else line.view(8, 1).expand(8, 8)
    return grid.expand(n, 4, 8, 8).clone()


def test_make_head_kinds_shapes_and_errors():
    torch.manual_seed(0)
    pooled, conv = make_head("pooled", 4, 2), make_head("conv", 4, 2)
    assert type(pooled) is PooledHead and isinstance(conv, ConvHead)
    x = torch.randn(3, 4, 8, 8)
    assert pooled(x).shape == (3,) and conv(x).shape == (3,)
    assert make_head("conv", 4, 1)(torch.randn(3, 4, 16)).shape == (3,)  # action chunks: 1-D positions
    assert make_head("conv", 4, 0)(torch.randn(3, 4)).shape == (3,)  # no positions: the MLP alone
    with pytest.raises(DistillError, match="pooled"):
        conv(torch.randn(3, 4, 16))  # a 1-D map for a head built for 2-D ones
    with pytest.raises(DistillError, match="pooled, conv"):
        make_head("attention", 4, 2)
    assert conv.config["kind"] == "conv" and conv.config["spatial_dims"] == 2
    # the rank comes from the modality's sample shape (channel axis first); pooled heads need none
    assert head_spatial_dims("conv", SimpleNamespace(sample_shape=(1, 16, 16))) == 2
    assert head_spatial_dims("conv", SimpleNamespace(sample_shape=(16, 2))) == 1
    assert head_spatial_dims("pooled", None) == 0


def test_pooled_head_cannot_tell_maps_with_equal_channel_means_and_conv_head_learns_to():
    torch.manual_seed(0)
    a, b = _stripes(16, vertical=True), _stripes(16, vertical=False)
    pooled = PooledHead(4)
    # the mean over the positions is all a pooled head sees: identical for both maps, at any weights
    torch.testing.assert_close(pooled(a), pooled(b))
    conv = ConvHead(4, spatial_dims=2)
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.relu(1 - conv(a)).mean() + torch.relu(1 + conv(b)).mean()  # hinge, a "real"
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (conv(a) > 0).all() and (conv(b) < 0).all()


def test_multi_layer_head_builds_conv_heads_and_reads_step_labels():
    torch.manual_seed(0)
    head = MultiLayerHead({"mid": 4, "up.1": 2}, labels=3, kind="conv", spatial_dims=2)
    assert all(isinstance(h, ConvHead) for h in head.heads) and head.config["kind"] == "conv"
    features = {"mid": torch.randn(5, 4, 4, 4), "up.1": torch.randn(5, 2, 8, 8)}
    assert head(features).shape == (2, 5)
    assert head(features, torch.tensor([0, 1, 2, 0, 1])).shape == (2, 5)


def test_methods_check_the_head_option():
    with pytest.raises(DistillError, match="gan_head"):
        DMD2(DMD2.Options(gan_head="attention"))
    with pytest.raises(DistillError, match="head"):
        ADD(ADD.Options(head="attention"))
    assert DMD2(DMD2.Options(gan_head="conv")).options.gan_head == "conv"
