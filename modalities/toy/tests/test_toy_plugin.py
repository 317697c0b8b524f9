"""Plugin registration through the hook implementations."""
from __future__ import annotations

import pytest

import distill_toy.plugin as plugin
from distill_toy.modality import ToyModality
from distill_toy.teacher import load_exact_teacher


class FakeRegister:
    def __init__(self):
        self.calls = []

    def add(self, name, obj, *, description=""):
        self.calls.append((name, obj, description))
        return obj


def test_hookimpls_register_modality_and_teacher():
    modalities, teachers = FakeRegister(), FakeRegister()
    plugin.distill_register_modalities(modalities)
    plugin.distill_register_teachers(teachers)
    assert [(n, o) for n, o, _ in modalities.calls] == [("toy", ToyModality)]
    assert [(n, o) for n, o, _ in teachers.calls] == [("exact", load_exact_teacher)]
    assert all(d for _, _, d in modalities.calls + teachers.calls)


def test_functions_are_marked_as_hookimpls():
    for name in ("distill_register_modalities", "distill_register_teachers"):
        assert hasattr(getattr(plugin, name), "distill_impl"), name


def test_registers_through_the_plugin_manager():
    plugins = pytest.importorskip("distill.plugins")
    pm = plugins.PluginManager([("toy", plugin)], entry_points=False)
    assert pm.modality("toy") is ToyModality
    assert pm.teachers.get("exact") is load_exact_teacher


def test_entry_point_is_declared():
    import pathlib
    import tomllib

    meta = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "distill-plugin-toy"
    assert meta["project"]["entry-points"]["distill"] == {"toy": "distill_toy.plugin"}
    assert "distill" in meta["project"]["dependencies"]
