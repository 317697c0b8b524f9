"""distill-plugin-policy: diffusion policies for distill (action chunks, rollouts, benchmarks)."""
from __future__ import annotations

__version__ = "0.1.0"

from distill_policy.modality import PolicyModality
from distill_policy.normalizer import Normalizer

__all__ = ["__version__", "Normalizer", "PolicyModality"]
