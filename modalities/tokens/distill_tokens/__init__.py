"""distill-plugin-tokens: the ``tokens`` modality (discrete diffusion over fixed-length sequences)."""
from __future__ import annotations

from distill_tokens.languages import Arithmetic, Chain, make_language
from distill_tokens.modality import TokensModality

__all__ = ["Arithmetic", "Chain", "TokensModality", "make_language"]
