"""Hook implementations: what this plugin adds to distill.

This module is the entry point (``[project.entry-points.distill] template =
"distill_template.plugin"``). Keep its imports cheap: distill imports it whenever
it lists or loads plugins.
"""
from __future__ import annotations

from distill import hookimpl

from distill_template.method import TemplateMethod


@hookimpl
def distill_register_methods(register):
    """Register the template method under its name."""
    register.add(TemplateMethod.name, TemplateMethod)
