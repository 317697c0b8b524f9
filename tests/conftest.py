"""Core test set-up: the fixture plugin is loaded through DISTILL_PLUGIN_MODULES."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURE_PLUGIN = "tests.fixtures.mixture_plugin"


@pytest.fixture
def fixture_plugins(monkeypatch):
    """Plugin manager with the test modality 'mix' (and 'fake_tokens') registered."""
    from distill import plugins

    monkeypatch.setenv("DISTILL_PLUGIN_MODULES", FIXTURE_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    manager = plugins.get_manager(reload=True)
    yield manager
    monkeypatch.delenv("DISTILL_PLUGIN_MODULES")
    plugins.get_manager(reload=True)
