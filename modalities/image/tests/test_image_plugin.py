"""Plugin registration of the image modality."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

import distill_image
import distill_image.plugin as plugin
from distill.plugins import PluginManager
from distill_image.modality import ImageModality


def test_registers_through_the_plugin_manager():
    pm = PluginManager(extra_plugins=[("distill-plugin-image", distill_image.plugin)], entry_points=False)
    assert pm.modality("image") is ImageModality
    entry = pm.modalities.entry("image")
    assert entry.description == ImageModality.description


def test_hookimpl_is_marked_and_registers_only_image():
    assert hasattr(plugin.distill_register_modalities, "distill_impl")
    calls = []

    class Register:
        def add(self, name, obj, *, description=""):
            calls.append((name, obj, description))

    plugin.distill_register_modalities(Register())
    assert [(n, o) for n, o, _ in calls] == [("image", ImageModality)] and calls[0][2]


def test_entry_point_and_dependencies_are_declared():
    meta = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "distill-plugin-image"
    assert meta["project"]["entry-points"]["distill"] == {"image": "distill_image.plugin"}
    deps = " ".join(meta["project"]["dependencies"])
    for name in ("distill", "scikit-learn", "scikit-image", "pillow"):
        assert name in deps
    assert distill_image.__version__ == meta["project"]["version"]


def test_importing_the_plugin_is_cheap():
    """Every distill command loads the plugin: it must not import Lightning, sklearn or skimage."""
    code = (
        "import sys, distill_image.plugin; "
        "print(sorted(m for m in ('lightning', 'sklearn', 'skimage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
