"""Suite-wide set-up: a fresh on-disk teacher-output cache per test session.

Runs must not depend on what an earlier session (or the user's own runs) left in
``~/.cache/distill``, so every test, and every subprocess a test starts, caches into a
temporary folder of this session (tests of the cache itself use their own folders).
"""
from __future__ import annotations

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="distill-test-cache-")


def pytest_configure(config):
    os.environ["DISTILL_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
