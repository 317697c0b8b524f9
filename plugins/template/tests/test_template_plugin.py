"""Tests of the template plugin: it loads through distill's plugin manager and its loss runs."""
from __future__ import annotations

import copy
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.method import Batch, Roles
from distill.plugins import PluginManager

import distill_template
from distill_template import plugin
from distill_template.method import TemplateMethod

ROOT = Path(__file__).resolve().parents[1]


def manager() -> PluginManager:
    return PluginManager(extra_plugins=[("distill-plugin-template", plugin)], entry_points=False, builtins=[], env={})


def test_entry_point_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "distill-plugin-template"
    assert project["version"] == distill_template.__version__
    assert project["entry-points"]["distill"] == {"template": "distill_template.plugin"}


def test_declared_entry_point_loads():
    """The entry point as pyproject declares it loads through the manager (no install needed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    value = project["entry-points"]["distill"]["template"]
    ep = metadata.EntryPoint(name="template", value=value, group="distill")
    m = PluginManager(entry_points=[ep], builtins=[], env={})
    assert m.failed == []
    assert m.method("template") is TemplateMethod


def test_hook_registers_the_method():
    m = manager()
    assert m.failed == []
    assert m.method("template") is TemplateMethod
    entry = m.methods.entry("template")
    assert entry.plugin == "distill-plugin-template"
    assert m.hooks_of("distill-plugin-template") == ["distill_register_methods"]
    described = m.describe()["methods"]
    assert described == [{"name": "template", "plugin": "distill-plugin-template",
                          "description": TemplateMethod.description, "kinds": ["continuous"],
                          "max_student_steps": TemplateMethod.max_student_steps, "step_agnostic": False}]


def test_refuses_discrete_modalities():
    tokens = type("Tokens", (), {"name": "tokens", "kind": "discrete"})
    with pytest.raises(DistillError, match="method 'template' needs a continuous modality, but 'tokens' is discrete"):
        manager().check_compatible("template", tokens)


class _Process:
    t_max = 1.0

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t


class _Denoiser(nn.Module):
    """Duck-typed stand-in for distill.Denoiser: predicts x0 with a linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)
        self.process = _Process()

    def predict(self, x_t, t, cond=None, target="x0"):
        assert target == "x0"
        return self.net(x_t)


def test_loss_is_pure_tensor_code():
    torch.manual_seed(0)
    teacher = _Denoiser().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    method = TemplateMethod()
    batch = Batch(noise=torch.randn(8, 2))
    roles = Roles({"teacher": teacher, "student": student})
    assert method.phases(0) == ["student"]
    assert [r.name for r in method.roles()] == ["student"]
    same = method.loss("student", batch, roles)
    assert float(same.total.detach()) == pytest.approx(0.0, abs=1e-12)

    with torch.no_grad():
        student.net.bias.add_(1.0)
    losses = method.loss("student", batch, roles)
    assert set(losses.terms) == {"mse"}
    assert float(losses.total.detach()) == pytest.approx(1.0, rel=1e-5)
    losses.total.backward()
    assert student.net.bias.grad is not None and teacher.net.bias.grad is None
