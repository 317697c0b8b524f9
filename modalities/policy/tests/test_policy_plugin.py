"""Plugin registration of the policy modality."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

import distill_policy
import distill_policy.plugin as plugin
from distill.plugins import PluginManager
from distill_policy.modality import PolicyModality


def test_registers_through_the_plugin_manager():
    pm = PluginManager(extra_plugins=[("distill-plugin-policy", distill_policy.plugin)], entry_points=False)
    assert pm.failed == []
    assert pm.modality("policy") is PolicyModality
    assert pm.modalities.entry("policy").plugin == "distill-plugin-policy"
    pm.check_compatible("dmd2", "policy")
    pm.check_compatible("cd", "policy")


def test_entry_point_and_version():
    meta = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "distill-plugin-policy"
    assert meta["project"]["entry-points"]["distill"] == {"policy": "distill_policy.plugin"}
    assert distill_policy.__version__ == meta["project"]["version"]


def test_importing_the_plugin_is_cheap():
    """Every distill command loads the plugin: it must not import Lightning, matplotlib or gymnasium."""
    code = ("import sys, distill_policy.plugin; "
            "print(sorted(m for m in ('lightning', 'matplotlib', 'gymnasium', 'mujoco') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
