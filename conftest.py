"""Suite-wide set-up: a fresh on-disk teacher-output cache per test session, and one CPU
thread per parallel worker.

Runs must not depend on what an earlier session (or the user's own runs) left in
``~/.cache/distill``, so every test, and every subprocess a test starts, caches into a
temporary folder of this session (tests of the cache itself use their own folders).

Under pytest-xdist (``make test``: two workers on a 2-core machine) each worker runs torch on
one thread: with torch's default (one thread per core) the workers oversubscribe the cores,
and OpenMP's spinning threads then stall small ops badly (a 50-step UNet test measured 7 s
alone and 196 s beside the other worker). Tests that need another count set it themselves.
"""
from __future__ import annotations

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="distill-test-cache-")


def pytest_configure(config):
    os.environ["DISTILL_CACHE_DIR"] = _CACHE
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the subprocesses tests start


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
