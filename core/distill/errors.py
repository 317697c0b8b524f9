"""User-facing errors."""
from __future__ import annotations


class DistillError(Exception):
    """An error a user can act on: what was wrong, what was expected, what to do.

    The CLI prints the message (no traceback) and exits with status 2.
    """
