"""Make distill_template importable when the distribution is not installed."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
try:
    import distill_template  # noqa: F401
except ImportError:
    sys.path.insert(0, ROOT)
