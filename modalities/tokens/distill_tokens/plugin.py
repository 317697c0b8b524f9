"""Hook implementations of the tokens plugin (entry point ``distill: tokens = distill_tokens.plugin``).

Importing this module is cheap: the languages, networks and benchmark load on first use.
"""
from __future__ import annotations

from distill import hookimpl
from distill_tokens.modality import TokensModality


@hookimpl
def distill_register_modalities(register) -> None:
    register.add("tokens", TokensModality, description=TokensModality.description)
