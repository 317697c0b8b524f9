"""Generic reference networks used by modalities.

* :class:`MLPDenoiserNet` -- residual FiLM MLP for vector data (toy mixtures, low-dim policies).
* :func:`sinusoidal_embedding`, :class:`ScalarConditioning` -- time embedding and the
  mechanism for extra scalar inputs (``r``, ``d``, ``w``) a method needs.
"""
from __future__ import annotations

from distill.nets.embeddings import ExtraInputError, ScalarConditioning, SinusoidalEmbedding, sinusoidal_embedding
from distill.nets.mlp import FiLMBlock, MLPDenoiserNet

__all__ = [
    "ExtraInputError",
    "FiLMBlock",
    "MLPDenoiserNet",
    "ScalarConditioning",
    "SinusoidalEmbedding",
    "sinusoidal_embedding",
]
