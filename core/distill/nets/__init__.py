"""Generic reference networks used by modalities.

* :class:`MLPDenoiserNet` -- residual FiLM MLP for vector data (toy mixtures, low-dim policies).
* :func:`sinusoidal_embedding`, :class:`ScalarConditioning` -- time embedding and the
  mechanism for extra scalar inputs (``r``, ``d``, ``w``) a method needs;
  :func:`with_extra_inputs` gives a teacher-initialised role those inputs.
* :class:`UNetDenoiserNet` -- small ADM-style class-conditional UNet for 16x16-32x32 images.
* :class:`DiTDenoiserNet` -- small DiT (adaLN-Zero Transformer on patches) for the same images.
* :class:`TokenTransformerNet` -- bidirectional adaLN Transformer over tokens returning logits (discrete diffusion).
"""
from __future__ import annotations

from distill.nets.embeddings import ExtraInputError, ScalarConditioning, SinusoidalEmbedding, sinusoidal_embedding, with_extra_inputs
from distill.nets.mlp import FiLMBlock, MLPDenoiserNet
from distill.nets.unet import UNetDenoiserNet
from distill.nets.dit import DiTDenoiserNet
from distill.nets.token_transformer import TokenTransformerNet

__all__ = [
    "DiTDenoiserNet",
    "ExtraInputError",
    "FiLMBlock",
    "MLPDenoiserNet",
    "ScalarConditioning",
    "SinusoidalEmbedding",
    "TokenTransformerNet",
    "UNetDenoiserNet",
    "sinusoidal_embedding",
    "with_extra_inputs",
]
