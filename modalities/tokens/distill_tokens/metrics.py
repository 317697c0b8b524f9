"""Metrics of generated token sequences against a language's true generator.

* ``validity``: fraction of sequences with positive probability under the generator (exact).
* ``nll``: mean exact negative log-likelihood (nats per sequence) under the true generator over
  the *valid* samples (an invalid one has NLL = inf); None when no sample is valid. Compare it
  with the language's entropy: below it means the model prefers likelier sequences (it has lost
  diversity), above it the rarer ones. For the arithmetic language every valid sequence has the
  same probability, so there it equals the entropy whenever it is defined.
* ``coverage_kl``: KL(h || uniform) = log K - H(h) of the histogram h of the operands (the values
  the generator draws uniformly) of the valid samples, over K bins. The plug-in estimate is
  biased upwards by about (K - 1) / (2 N) for N operands, so compare rows of similar N.
* ``distinct``: the fraction of distinct sequences.
* ``entropy``: the entropy (nats) of the unigram distribution of the tokens of all samples.
* ``equation_validity`` (arithmetic only): the fraction of single equations that are right, a
  finer view of a model whose whole sequences are rarely all right.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from distill_tokens.languages import Language

__all__ = ["token_metrics", "coverage_kl", "distinct_ratio", "unigram_entropy"]


def coverage_kl(values: torch.Tensor, bins: int) -> float | None:
    """KL(histogram || uniform on ``bins``) in nats; None without values."""
    if values.numel() == 0:
        return None
    h = torch.bincount(values.long().flatten(), minlength=bins)[:bins].double()
    p = h / h.sum()
    nz = p[p > 0]
    return float(math.log(bins) + (nz * nz.log()).sum())


def distinct_ratio(x: torch.Tensor) -> float:
    return float(torch.unique(x.long(), dim=0).shape[0] / max(1, x.shape[0]))


def unigram_entropy(x: torch.Tensor, vocab_size: int) -> float:
    counts = torch.bincount(x.long().flatten().clamp(0, vocab_size), minlength=vocab_size + 1).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


def token_metrics(language: Language, samples: torch.Tensor) -> dict[str, Any]:
    """The five metrics of ``samples`` [n, L] (tokens, any dtype) under ``language``."""
    x = samples.round().long().cpu() if samples.is_floating_point() else samples.long().cpu()
    ok = language.valid(x)
    nll = language.nll(x)[ok]
    out = {
        "validity": float(ok.double().mean()),
        "nll": float(nll.mean()) if nll.numel() else None,
        "coverage_kl": coverage_kl(language.operands(x), language.operand_bins),
        "distinct": distinct_ratio(x),
        "entropy": unigram_entropy(x, language.vocab_size),
    }
    per_equation = getattr(language, "equation_valid", None)
    if per_equation is not None:  # arithmetic: the fraction of single equations that are right
        out["equation_validity"] = float(per_equation(x).double().mean())
    return out
