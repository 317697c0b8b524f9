"""Meta-test: every hookspec is documented, has a docstring, and is exercised by a test."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from distill import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"


def _hookspecs() -> list[str]:
    names = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(fn, hookspecs.PROJECT_NAME + "_spec", None) is not None
    ]
    assert names, "distill.hookspecs defines no hookspecs"
    return sorted(names)


def _test_files() -> list[Path]:
    files = list((ROOT / "tests").rglob("test_*.py"))
    for pattern in ("modalities/*/tests", "plugins/*/tests"):
        for d in ROOT.glob(pattern):
            files += d.rglob("test_*.py")
    return [f for f in files if f.resolve() != Path(__file__).resolve()]


def test_hook_names_constant_matches_hookspecs():
    assert sorted(hookspecs.HOOK_NAMES) == _hookspecs()


@pytest.mark.parametrize("name", _hookspecs())
def test_hookspec_has_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc) > 80, f"hookspec {name} needs a real docstring (what to register, contract, example)"
    assert "register.add(" in doc, f"hookspec {name}'s docstring should show an example register.add(...)"


@pytest.mark.parametrize("name", _hookspecs())
def test_hookspec_documented_under_heading(name):
    text = DOC.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if re.match(r"^#{1,6}\s", line)]
    assert any(name in h for h in headings), f"docs/plugins.md has no heading naming {name}"


@pytest.mark.parametrize("name", _hookspecs())
def test_hookspec_exercised_by_a_test(name):
    hits = [f for f in _test_files() if name in f.read_text(encoding="utf-8")]
    assert hits, f"no test under tests/, modalities/*/tests or plugins/*/tests mentions {name}"


def test_module_docstring_promises_signature_stability():
    assert "only ever *gain* arguments" in (hookspecs.__doc__ or "")
