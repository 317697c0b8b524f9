"""Token metrics against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from distill_tokens.languages import Arithmetic
from distill_tokens.metrics import coverage_kl, distinct_ratio, token_metrics, unigram_entropy


def test_coverage_kl_closed_forms():
    assert coverage_kl(torch.arange(10), 10) == pytest.approx(0.0, abs=1e-12)  # uniform histogram
    assert coverage_kl(torch.zeros(7, dtype=torch.long), 10) == pytest.approx(math.log(10))  # one bin
    assert coverage_kl(torch.tensor([0, 1]), 4) == pytest.approx(math.log(2))  # half of the bins
    assert coverage_kl(torch.tensor([], dtype=torch.long), 4) is None


def test_distinct_and_unigram_entropy():
    x = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 0]])
    assert distinct_ratio(x) == pytest.approx(0.75)
    # tokens: 0 x3, 1 x4, 2 x1 over 8
    p = torch.tensor([3 / 8, 4 / 8, 1 / 8])
    assert unigram_entropy(x, 3) == pytest.approx(float(-(p * p.log()).sum()))


def test_token_metrics_on_a_mix_of_valid_and_invalid_samples():
    lang = Arithmetic()
    good = lang.encode(["07+13=020;99+99=198;00+00=000;", "50+50=100;01+09=010;45+54=099;"])
    bad = lang.encode(["07+13=021;99+99=198;00+00=000;"])
    m = token_metrics(lang, torch.cat([good, good[:1], bad]).float())  # floats, as samplers return them
    assert m["validity"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(6 * math.log(100))  # over the valid samples only
    assert m["distinct"] == pytest.approx(0.75)
    # operands of the 3 valid samples: 18 values in 100 bins
    ops = torch.tensor([7, 99, 0, 50, 1, 45, 7, 99, 0, 13, 99, 0, 50, 9, 54, 13, 99, 0])
    assert m["coverage_kl"] == pytest.approx(coverage_kl(ops, 100))
    assert m["equation_validity"] == pytest.approx(11 / 12)  # one wrong equation among twelve
    assert token_metrics(lang, bad)["nll"] is None
