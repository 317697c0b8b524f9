"""TokenTransformerNet: shapes, zero init, bidirectional attention, extra inputs, input checks."""
from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.nets.embeddings import with_extra_inputs
from distill.nets.token_transformer import TokenTransformerNet


def randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def test_shapes_and_zero_initial_logits():
    net = TokenTransformerNet(vocab_size=7, seq_len=5, hidden=16, depth=2, heads=2, time_dim=8)
    x = torch.randint(0, 8, (3, 5))  # 7 = the mask token is a valid input
    out = net(x, torch.rand(3))
    assert out.shape == (3, 5, 7)
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero: a fresh network predicts uniform


def test_attention_is_bidirectional():
    net = randomised(TokenTransformerNet(vocab_size=5, seq_len=4, hidden=8, depth=1, heads=2, time_dim=8))
    x = torch.tensor([[1, 2, 3, 4]])
    y = x.clone()
    y[0, 3] = 0  # change the last token
    z = x.clone()
    z[0, 0] = 0  # change the first token
    t = torch.tensor([0.5])
    assert not torch.allclose(net(x, t)[0, 0], net(y, t)[0, 0])  # the first position sees the last
    assert not torch.allclose(net(x, t)[0, 3], net(z, t)[0, 3])  # and the last the first


def test_extra_inputs_start_as_the_teacher():
    net = randomised(TokenTransformerNet(vocab_size=5, seq_len=4, hidden=8, depth=1, heads=2, time_dim=8))
    wider = with_extra_inputs(net, ("lam",))
    x, t = torch.randint(0, 6, (2, 4)), torch.rand(2)
    assert torch.allclose(wider(x, t, lam=torch.rand(2)), net(x, t), atol=1e-6)
    with pytest.raises(DistillError, match="lam"):
        net(x, t, lam=torch.rand(2))


def test_bad_inputs_are_refused():
    net = TokenTransformerNet(vocab_size=5, seq_len=4, hidden=8, depth=1, heads=2, time_dim=8)
    with pytest.raises(DistillError, match="integer tokens"):
        net(torch.rand(2, 4), torch.rand(2))
    with pytest.raises(DistillError, match=r"\[B, 4\]"):
        net(torch.zeros(2, 3, dtype=torch.long), torch.rand(2))
    with pytest.raises(DistillError, match="multiple of heads"):
        TokenTransformerNet(vocab_size=5, seq_len=4, hidden=10, heads=4)


def test_rotary_scores_depend_on_relative_offsets_only():
    from distill.nets.token_transformer import apply_rotary, rotary_tables

    cos, sin = rotary_tables(12, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
    seq_q = apply_rotary(q.expand(1, 1, 12, 8), cos, sin)[0, 0]
    seq_k = apply_rotary(k.expand(1, 1, 12, 8), cos, sin)[0, 0]
    scores = seq_q @ seq_k.T  # [12, 12]: query position i, key position j
    for offset in (0, 3, -5):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
    assert torch.allclose(seq_q.norm(dim=-1), q.norm().expand(12), atol=1e-5)  # rotations keep lengths


@pytest.mark.parametrize("absolute", [True, False])
def test_absolute_positions_tell_positions_apart_from_the_fully_masked_start(absolute):
    """From an all-mask input, rotary embeddings alone give every position the same logits
    (attention sees only relative offsets, and every token is the same); the learned absolute
    embedding is what lets a fixed layout such as ``aa+bb=ccc;`` start in the right place."""
    net = randomised(TokenTransformerNet(vocab_size=5, seq_len=6, hidden=8, depth=2, heads=2, time_dim=8,
                                         absolute_positions=absolute))
    masked = torch.full((1, 6), 5)  # 5 = the mask token
    logits = net(masked, torch.ones(1))[0]
    same = torch.allclose(logits, logits[0].expand_as(logits), atol=1e-5)
    assert same != absolute
    assert net.config["absolute_positions"] is absolute
