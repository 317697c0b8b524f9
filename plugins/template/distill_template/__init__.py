"""distill-plugin-template: a minimal third-party method plugin for distill.

Copy this distribution to start a plugin; see docs/plugins.md in distill.
"""
from __future__ import annotations

__version__ = "0.1.0"
