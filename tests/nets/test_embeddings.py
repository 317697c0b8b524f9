"""with_extra_inputs: a teacher-initialised role gains extra scalars and starts as an exact copy."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.nets import MLPDenoiserNet, UNetDenoiserNet, with_extra_inputs


@pytest.mark.parametrize("make, shape", [
    (lambda **kw: MLPDenoiserNet(dim=2, hidden=32, depth=2, **kw), (6, 2)),
    (lambda **kw: UNetDenoiserNet(in_channels=1, resolution=8, base_channels=8, channel_mults=(1, 2), num_classes=3, **kw), (6, 1, 8, 8)),
])
def test_copy_with_extra_inputs_matches_the_original(make, shape):
    torch.manual_seed(0)
    net = make()
    for p in net.parameters():  # non-trivial weights everywhere
        p.data.normal_(0, 0.1)
    wider = with_extra_inputs(net, ("r", "w"))
    assert wider.extra_inputs == ("r", "w") and net.extra_inputs == ()
    x, t = torch.randn(shape), torch.rand(shape[0])
    cond = torch.randint(0, 3, (shape[0],)) if len(shape) > 2 else None
    expected = net(x, t, cond)
    assert torch.equal(wider(x, t, cond, r=torch.rand(shape[0]), w=2.0), expected)  # zero-initialised embeddings
    # after training the new embeddings, r changes the output
    for p in wider.extras.parameters():
        p.data.normal_(0, 0.1)
    assert not torch.allclose(wider(x, t, cond, r=torch.zeros(shape[0])), wider(x, t, cond, r=torch.ones(shape[0])))
    # no new names: a plain copy
    same = with_extra_inputs(wider, ("r",))
    assert same is not wider and same.extra_inputs == ("r", "w")


def test_foreign_network_gets_a_clear_error():
    with pytest.raises(DistillError, match="reference networks"):
        with_extra_inputs(nn.Linear(2, 2), ("r",))
