"""The two languages: validity checkers on hand-made sequences, exact NLL and entropy."""
from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill_tokens.languages import Arithmetic, Chain, make_language


@pytest.fixture
def arith() -> Arithmetic:
    return Arithmetic()


def test_arithmetic_accepts_correct_equations(arith):
    x = arith.encode(["07+13=020;99+99=198;00+00=000;", "50+50=100;01+09=010;45+54=099;"])
    assert arith.valid(x).tolist() == [True, True]
    assert arith.decode(x)[0] == "07+13=020;99+99=198;00+00=000;"


@pytest.mark.parametrize("text, why", [
    ("07+13=021;99+99=198;00+00=000;", "wrong sum in the first equation"),
    ("07+13=020;99+99=198;00+00=001;", "wrong sum in the last equation"),
    ("07+13=020;99+99=198;00+00=00;;", "a symbol where a digit belongs"),
    ("07=13+020;99+99=198;00+00=000;", "operators swapped"),
    ("07+13=020+99+99=198;00+00=000;", "separator replaced"),
    ("7+13=020;;99+99=198;00+00=000;", "not zero padded"),
])
def test_arithmetic_rejects_broken_sequences(arith, text, why):
    assert not bool(arith.valid(arith.encode(text))[0]), why


def test_arithmetic_mask_tokens_are_invalid(arith):
    x = arith.encode("07+13=020;99+99=198;00+00=000;")
    x[0, 7] = 13  # the mask id of the masked process
    assert not bool(arith.valid(x)[0])


def test_arithmetic_nll_and_entropy(arith):
    x = arith.sample(500, torch.Generator().manual_seed(0))
    assert bool(arith.valid(x).all())
    assert torch.allclose(arith.nll(x), torch.full((500,), 6 * math.log(100), dtype=torch.float64))
    assert arith.entropy() == pytest.approx(6 * math.log(100))
    bad = arith.encode("07+13=021;99+99=198;00+00=000;")
    assert math.isinf(float(arith.nll(bad)[0]))


def test_arithmetic_unigram_matches_samples(arith):
    x = arith.sample(20000, torch.Generator().manual_seed(1))
    freq = torch.bincount(x.flatten(), minlength=13).double() / x.numel()
    se = (arith.unigram() * (1 - arith.unigram()) / x.numel()).sqrt()
    assert bool(((freq - arith.unigram()).abs() < 5 * se + 1e-9).all())


def test_chain_validity_on_hand_made_sequences():
    c = Chain(vocab=64, length=6)
    # right to left: 40 -> 10 -> 2 -> 0, then a free 63 -> 15
    valid = torch.tensor([[15, 63, 0, 2, 10, 40], [5, 0, 0, 1, 7, 31], [0, 0, 0, 0, 0, 0]])
    assert c.valid(valid).tolist() == [True, True, True]
    invalid = torch.tensor([[15, 63, 0, 2, 11, 40],  # 40 needs 10 before it
                            [15, 63, 1, 2, 10, 40],  # 2 needs 0 before it
                            [0, 0, 0, 0, 0, 64]])  # out of the vocabulary
    assert c.valid(invalid).tolist() == [False, False, False]


def test_chain_nll_counts_free_positions():
    c = Chain(vocab=64, length=6)
    x = torch.tensor([[15, 63, 0, 2, 10, 40]])
    # free: the last position, and position 1 (its successor is 0)
    assert c.free(x).tolist() == [[False, True, False, False, False, True]]
    assert float(c.nll(x)[0]) == pytest.approx(2 * math.log(64))
    y = torch.tensor([[5, 0, 0, 1, 7, 31]])
    assert int(c.free(y).sum()) == 3  # positions 0 and 1 follow zeros, and the last one
    assert float(c.nll(y)[0]) == pytest.approx(3 * math.log(64))
    assert math.isinf(float(c.nll(torch.tensor([[15, 63, 0, 2, 11, 40]]))[0]))


def test_chain_entropy_and_marginals_match_samples():
    c = Chain()
    x = c.sample(20000, torch.Generator().manual_seed(2))
    assert bool(c.valid(x).all())
    nll = c.nll(x)
    se = float(nll.std()) / math.sqrt(nll.numel())
    assert float(nll.mean()) == pytest.approx(c.entropy(), abs=5 * se)
    m = c.marginals()
    assert torch.allclose(m.sum(-1), torch.ones(c.length, dtype=torch.float64))
    zero_freq = (x == 0).double().mean(0)
    assert bool(((zero_freq - m[:, 0]).abs() < 5 * (m[:, 0] * (1 - m[:, 0]) / 20000).sqrt() + 1e-9).all())


def test_unknown_language():
    with pytest.raises(DistillError, match="arithmetic, chain"):
        make_language("dyck")
